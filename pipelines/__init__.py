"""syncline's Dagster code location, CLI, packaged sync files and the sample warehouse."""

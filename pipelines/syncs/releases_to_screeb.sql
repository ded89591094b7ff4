SELECT
    _key,
    name,
    description,
    version,
    tags,                                   -- VARCHAR[]: an array of strings
    released_at                             -- optional at Screeb (defaults to now); ISO 8601 +00:00
FROM source

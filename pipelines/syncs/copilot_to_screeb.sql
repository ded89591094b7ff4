-- event_name decides what is required: ids for all but screeb_copilot_conversion, prompt for
-- user prompts (<= 10,000 chars), response for responses, rating + rating_scale for satisfaction.
-- rating and rating_scale are integers here and sent as strings, as Screeb requires.
SELECT
    _key,
    external_id AS user_alias,
    'copilot' AS type,
    event_name,
    conversation_id,
    copilot_session_id,
    prompt,
    response,
    rating,
    rating_scale,
    {'model': model} AS properties
FROM source

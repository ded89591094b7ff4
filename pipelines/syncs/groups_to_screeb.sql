-- `action` is 'assign' or 'unassign'; the event type follows from it.
SELECT
    _key,
    external_id AS user_alias,
    'group.' || action AS type,
    group_type,
    group_name,
    {'industry': industry} AS properties
FROM source

-- One payload item per product event. `source` is the extracted window; `_key` is its primary key.
SELECT
    _key,
    user_id,
    event_name AS event,
    occurred_at AS timestamp,              -- TIMESTAMPTZ: sent as ISO 8601 with +00:00
    {'$thread_id': thread_id, 'plan': plan, 'country': country} AS properties
FROM source

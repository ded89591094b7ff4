SELECT
    _key,
    user_id,
    prompt,
    generation,
    assistant_id,
    occurred_at AS timestamp,
    latency_s AS latency,                  -- text in the warehouse: non-numbers are rejected with a reason
    {'$thread_id': thread_id, 'copilot_session_id': copilot_session_id} AS properties
FROM source

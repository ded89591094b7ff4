-- One /server-events event per conversion. idempotencyKey is not selected here: the engine sends the
-- ledger's idempotency key (a hash of sync, endpoint and conversion_id) in it, stable across reruns.
SELECT
    _key,
    'conversion' AS eventType,
    event_name AS eventName,
    converted_at AS timestamp,                         -- TIMESTAMPTZ: sent as ISO 8601 with +00:00
    visitor,                                           -- JSON text {id, ip, userAgent}; anything else is rejected
    page,
    {'amountUsd': amount_usd, 'plan': plan} AS properties,
    experiment_id AS experimentId,                     -- both or neither, checked against active experiments
    variant_id AS variantId
FROM source

-- One /server-events event per conversion. idempotencyKey is not selected here, so the engine sends the
-- ledger's idempotency key (a hash of sync, endpoint and conversion_id) in it, stable across reruns. A model
-- with an upstream event id (a Stripe event id, a webhook delivery id) may select it `AS idempotencyKey`:
-- it is then sent as written, and a replay under a second source key is stored once by GradeMyPage.
SELECT
    _key,
    'conversion' AS eventType,
    event_name AS eventName,
    converted_at AS timestamp,                         -- TIMESTAMPTZ: sent as ISO 8601 with +00:00
    visitor,                                           -- JSON text {id, ip, userAgent}: members must be strings
    page,
    {'amountUsd': amount_usd, 'plan': plan} AS properties,
    experiment_id AS experimentId,                     -- both or neither (ended experiments are delivered too)
    variant_id AS variantId
FROM source

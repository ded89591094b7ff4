-- Screeb has no timestamp field: events land at send time, so occurred_at travels as a property.
SELECT
    _key,
    external_id AS user_alias,
    'track' AS type,
    event_name,
    {
        'plan': plan,
        'amount': amount,                   -- only on renewals; NULL members are omitted
        'platform': platform,
        'occurred_at': strftime(occurred_at, '%Y-%m-%dT%H:%M:%SZ')
    } AS properties
FROM source

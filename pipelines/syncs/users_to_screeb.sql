-- One identify event per user. `properties` become the user's traits at Screeb.
SELECT
    _key,
    external_id AS user_alias,
    'identify' AS type,
    {
        'email': email,
        'plan': plan,                       -- NULL for some users: omitted unless keep_nulls
        'role': role,
        'company': company,
        'sessions_30d': sessions_30d,
        'signed_up_at': strftime(signed_up_at, '%Y-%m-%dT%H:%M:%SZ')
    } AS properties,
    {'locale': locale, 'timezone': timezone} AS context
FROM source

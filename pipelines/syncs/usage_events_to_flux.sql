-- One Flux event per metering record. `source` is the extracted window; `_key` is its primary key.
SELECT
    _key,
    _cursor,                               -- kept in the ledger: reconcile counts delivered events per window
    event_name AS name,                    -- NULL: rejected ("name is required") before anything is sent
    metered_at AS timestamp,               -- ISO 8601 text, sent as written (any ISO 8601 form: date-only and
                                           -- offset-less too); not ISO 8601: rejected with a reason
    account_id AS user_id,
    quantity AS value,                     -- text in the export: non-numbers are rejected with a reason
    {'account_id': account_id, 'sku': sku, 'unit': unit} AS properties,
    {'plan': plan, 'region': region} AS tags  -- tags must be strings: VARCHAR members only (NULL ones are left out)
FROM source

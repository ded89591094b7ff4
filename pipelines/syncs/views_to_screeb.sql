-- The key says which table a row came from. NULL fields and NULL property members are omitted, so each
-- type only carries its own fields (url for page, screen_name for screen) and properties.
SELECT
    _key,
    external_id AS user_alias,
    CASE WHEN starts_with(_key, 'page:') THEN 'page' ELSE 'screen' END AS type,
    url,
    screen_name,
    {'title': title, 'referrer': referrer, 'os': os, 'app_version': app_version} AS properties,
    CASE WHEN locale IS NOT NULL THEN {'locale': locale} END AS context
FROM source

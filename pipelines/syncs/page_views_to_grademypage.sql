-- One /track event per page view. `_key` is view_id; GradeMyPage itself dedups on
-- (visitorId, timestamp, eventType, pathname), so rows sharing that tuple are rejected after the first.
SELECT
    _key,
    event_type AS eventType,
    event_name AS eventName,
    CASE WHEN scroll_depth IS NOT NULL THEN {'scrollDepth': scroll_depth} END AS eventData,
    pathname,
    full_url AS fullUrl,
    referrer,
    session_id AS sessionId,
    visitor_id AS visitorId,
    occurred_at_ms AS timestamp,                       -- BIGINT epoch ms (a TIMESTAMPTZ works too)
    {'source': utm_source, 'medium': utm_medium, 'campaign': utm_campaign} AS utm
FROM source

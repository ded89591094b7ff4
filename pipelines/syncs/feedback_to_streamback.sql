-- One StreamBack feedback per row. screenshot_path and attachments are not sent in the feedback body:
-- they name local files (relative to SYNCLINE_HOME) that are uploaded through presigned URLs.
SELECT
    _key,
    _cursor,                                -- kept in the ledger: reconcile checks a window by it
    message,                                -- optional when emotion or surveyResponse is given; sent untrimmed
    feedback_type AS type,                  -- bug | suggestion | praise | question | other
    emotion,                                -- a number from 1 to 5
    trigger_source AS triggerSource,
    CASE WHEN survey_id IS NOT NULL THEN {
        'surveyId': survey_id, 'questionId': 'q1', 'questionType': 'stars',
        'answer': survey_answer, 'followUpText': survey_follow_up
    } END AS surveyResponse,
    {
        'url': page_url, 'route': page_route, 'viewportWidth': viewport_width,
        'viewportHeight': viewport_height, 'userAgent': user_agent
    } AS snapshot,
    {'id': user_id, 'email': user_email} AS "user",
    screenshot_path,                        -- NULL or '' means no screenshot
    attachment_paths AS attachments
FROM source

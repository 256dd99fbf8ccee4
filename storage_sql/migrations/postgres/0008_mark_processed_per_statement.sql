-- A final reply marks its request processed once per statement, not once per row
-- (cruster schema, version 8, PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
--
-- Until now every final reply ran a PL/pgSQL row trigger issuing its own UPDATE of the
-- request, whose BEFORE UPDATE row trigger ran PL/pgSQL again to stamp processed_at_ns:
-- two function calls and one UPDATE per reply, even inside a group-committed batch of
-- hundreds. Now one statement-level trigger reads the statement's new replies (a
-- transition table) and marks their requests processed in one set-based UPDATE that also
-- stamps processed_at_ns, which the row trigger then leaves alone.

DROP TRIGGER cruster_final_reply_marks_processed ON cruster_replies;
DROP FUNCTION cruster_mark_request_processed();

CREATE FUNCTION cruster_mark_requests_processed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cruster_messages AS m
    SET processed = TRUE,
        processed_at_ns = (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint
    FROM new_replies AS r
    WHERE r.is_final AND m.request_id = r.request_id AND NOT m.processed;
    RETURN NULL;
END
$$;

CREATE TRIGGER cruster_final_replies_mark_processed
    AFTER INSERT ON cruster_replies
    REFERENCING NEW TABLE AS new_replies
    FOR EACH STATEMENT
    EXECUTE FUNCTION cruster_mark_requests_processed();

-- Stamp only what the statement did not stamp itself.
DROP TRIGGER cruster_processed_at_on_update ON cruster_messages;
CREATE TRIGGER cruster_processed_at_on_update
    BEFORE UPDATE OF processed ON cruster_messages
    FOR EACH ROW WHEN (NEW.processed AND NOT OLD.processed AND NEW.processed_at_ns IS NULL)
    EXECUTE FUNCTION cruster_stamp_processed_at();

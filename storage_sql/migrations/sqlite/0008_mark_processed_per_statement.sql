-- A final reply marks its request processed and stamps processed_at_ns in one UPDATE
-- (cruster schema, version 8, SQLite).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
--
-- Until now a final reply's trigger set `processed`, and that UPDATE's own trigger wrote
-- the row a second time to stamp processed_at_ns. Now the reply's trigger does both, and
-- the stamping trigger runs only for an UPDATE that did not stamp. (PostgreSQL's version
-- of this migration also turns its row trigger into one per statement; SQLite has only
-- row triggers.)

DROP TRIGGER cruster_final_reply_marks_processed;
CREATE TRIGGER cruster_final_reply_marks_processed
    AFTER INSERT ON cruster_replies
    FOR EACH ROW WHEN NEW.is_final
BEGIN
    UPDATE cruster_messages
    SET processed = TRUE,
        processed_at_ns = CAST(unixepoch('subsec') * 1000000000 AS INTEGER)
    WHERE request_id = NEW.request_id AND NOT processed;
END;

DROP TRIGGER cruster_processed_at_on_update;
CREATE TRIGGER cruster_processed_at_on_update
    AFTER UPDATE OF processed ON cruster_messages
    FOR EACH ROW WHEN NEW.processed AND NOT OLD.processed AND NEW.processed_at_ns IS NULL
BEGIN
    UPDATE cruster_messages
    SET processed_at_ns = CAST(unixepoch('subsec') * 1000000000 AS INTEGER)
    WHERE request_id = NEW.request_id;
END;

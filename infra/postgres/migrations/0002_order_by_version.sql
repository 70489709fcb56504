-- A change replaces the reference_list_scope row of its number and scope when its version is
-- higher, or equal with a later changed_at (an expiry or a re-emission keeps the version).
-- 0001 said "changed_at, then version": changed_at is the clock of whichever worker wrote the
-- change, so a newer version written by a worker with a slower clock was dropped. The order
-- lives in the sink's upsert; this records it where the client's DBAs read the schema.

COMMENT ON COLUMN reference_list_scope.version IS
    'changes applied by the pipeline to this number and scope (orders the changes: higher wins)';
COMMENT ON COLUMN reference_list_scope.changed_at IS
    'when the pipeline wrote the change (its worker''s clock); orders changes of equal version';

-- At most one prepared key per replica (X.509: per replica and mode), held
-- by the database: two `signet ca prepare` calls at the same moment (or one
-- beside the rotation schedule, or on two replicas' schedules) each passed
-- the check before either inserted, and made two. The second insert is now
-- refused. Extra prepared keys such a race left behind never signed
-- anything: the earliest stays prepared, the others become old and leave
-- the bundle when they expire.
UPDATE ca_keys SET status = 'old'
WHERE status = 'prepared' AND EXISTS (
    SELECT 1 FROM ca_keys k
    WHERE k.status = 'prepared'
      AND COALESCE(k.replica, '') = COALESCE(ca_keys.replica, '')
      AND k.self_signed = ca_keys.self_signed
      AND (k.created_at < ca_keys.created_at
           OR (k.created_at = ca_keys.created_at AND k.id < ca_keys.id)));
CREATE UNIQUE INDEX ca_keys_one_prepared
    ON ca_keys ((COALESCE(replica, '')), self_signed) WHERE status = 'prepared';

UPDATE jwt_keys SET status = 'old'
WHERE status = 'prepared' AND EXISTS (
    SELECT 1 FROM jwt_keys k
    WHERE k.status = 'prepared'
      AND k.replica = jwt_keys.replica
      AND (k.created_at < jwt_keys.created_at
           OR (k.created_at = jwt_keys.created_at AND k.kid < jwt_keys.kid)));
CREATE UNIQUE INDEX jwt_keys_one_prepared ON jwt_keys (replica) WHERE status = 'prepared';

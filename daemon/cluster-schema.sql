-- cluster-schema.sql - the cluster backend's metadata in PostgreSQL
--
-- Every account's state, as the embedded backend keeps it in meta.db, in
-- one schema shared by all nodes. Each change is one function call that
-- answers for itself (applied, already done, or an error code), so a
-- batch of changes is one transaction sent in one round trip and a
-- refused change does not abort the others.
--
-- Order: every change function first takes the row lock of the account's
-- row in accounts. Under READ COMMITTED each statement then sees every
-- change committed before the lock was granted, so base versions are
-- checked against the account's one total order, whichever node applies
-- them. The lock is held to the end of the transaction.
--
-- Answers: r = 0 applied (version is the new sequence), 1 already done
-- (version is the entry's), or a negative errno as the embedded backend
-- gives it: -116 ESTALE (conflict), -2 ENOENT (missing entry or parent),
-- -22 EINVAL (a move into itself, a path that would grow too long).
-- Paths are bytes (bytea), checked against the path rules by the server
-- before they get here.

CREATE TABLE IF NOT EXISTS bs_accounts (
        id text PRIMARY KEY,
        key_hash text NOT NULL,
        seq bigint NOT NULL DEFAULT 0,
        log_floor bigint NOT NULL DEFAULT 0,
        created bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS bs_entries (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        path bytea NOT NULL,
        kind smallint NOT NULL,
        size bigint NOT NULL,
        mode integer NOT NULL,
        mtime_ns bigint NOT NULL,
        sha bytea,            -- files only
        target bytea,         -- symlinks only
        version bigint NOT NULL,
        device bytea,
        since bigint NOT NULL, -- where the current state began (differs from version below a moved directory)
        time bigint NOT NULL,
        PRIMARY KEY (account, path)
);
CREATE INDEX IF NOT EXISTS bs_entries_sha ON bs_entries (account, sha) WHERE sha IS NOT NULL;

CREATE TABLE IF NOT EXISTS bs_log (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        seq bigint NOT NULL,
        device bytea,
        op smallint NOT NULL,
        kind smallint NOT NULL,
        path bytea NOT NULL,
        path2 bytea,
        size bigint NOT NULL,
        mode integer NOT NULL,
        mtime_ns bigint NOT NULL,
        sha bytea,
        time bigint NOT NULL,
        PRIMARY KEY (account, seq)
);

-- Each state an entry left, with the sequences and times it began and ended.
CREATE TABLE IF NOT EXISTS bs_versions (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        id bigserial,
        path bytea NOT NULL,
        version bigint NOT NULL,
        kind smallint NOT NULL,
        sha bytea,
        size bigint NOT NULL,
        mode integer NOT NULL,
        mtime_ns bigint NOT NULL,
        target bytea,
        device bytea,
        since bigint NOT NULL,
        since_time bigint,
        replaced_seq bigint NOT NULL,
        until_time bigint NOT NULL,
        PRIMARY KEY (account, id)
);
CREATE INDEX IF NOT EXISTS bs_versions_path ON bs_versions (account, path);
CREATE INDEX IF NOT EXISTS bs_versions_sha ON bs_versions (account, sha) WHERE sha IS NOT NULL;

CREATE TABLE IF NOT EXISTS bs_devices (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        id bytea NOT NULL,
        name text,
        first_seen bigint NOT NULL,
        last_seen bigint NOT NULL,
        PRIMARY KEY (account, id)
);

-- Contents the object store holds for an account: a row only once its
-- object was stored, so a name in bs_entries or bs_versions never points
-- at a missing object.
CREATE TABLE IF NOT EXISTS bs_objects (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        sha bytea NOT NULL,
        size bigint NOT NULL,
        stored bigint NOT NULL,
        PRIMARY KEY (account, sha)
);

-- The answer of every change function.
DO $$ BEGIN
        CREATE TYPE bs_result AS (r integer, version bigint);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- Kinds and operations as the protocol numbers them (bs-proto.h).
-- kind: 1 file, 2 dir, 3 symlink; op: 1 put, 2 mkdir, 3 delete, 4 move, 5 symlink.

-- The transaction's time: all changes of a batch agree to the second.
-- Cut, not rounded, as time(2) is: a node's "now" is never before it.
CREATE OR REPLACE FUNCTION bs_now() RETURNS bigint LANGUAGE sql STABLE AS
$$ SELECT floor(extract(epoch FROM now()))::bigint $$;

-- Take the account's row lock: the total order. False for an unknown account.
CREATE OR REPLACE FUNCTION bs_lock(a text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
        PERFORM 1 FROM bs_accounts WHERE id = a FOR UPDATE;
        RETURN FOUND;
END $$;

-- The lower and upper bounds of "everything below p": [p || '/', p || '0').
CREATE OR REPLACE FUNCTION bs_below_lo(p bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS
$$ SELECT p || '\x2f'::bytea $$;
CREATE OR REPLACE FUNCTION bs_below_hi(p bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS
$$ SELECT p || '\x30'::bytea $$;

-- The parent of p, or NULL at the top.
CREATE OR REPLACE FUNCTION bs_parent(p bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
        i integer;
BEGIN
        FOR i IN REVERSE length(p) .. 1 LOOP
                IF get_byte(p, i - 1) = 47 THEN
                        RETURN substring(p FROM 1 FOR i - 1);
                END IF;
        END LOOP;
        RETURN NULL;
END $$;

-- True when p's parent is a directory entry (or p is at the top).
CREATE OR REPLACE FUNCTION bs_parent_ok(a text, p bytea) RETURNS boolean LANGUAGE sql STABLE AS $$
        SELECT bs_parent(p) IS NULL OR EXISTS (
                SELECT 1 FROM bs_entries WHERE account = a AND path = bs_parent(p) AND kind = 2)
$$;

-- The next sequence of a locked account.
CREATE OR REPLACE FUNCTION bs_next_seq(a text) RETURNS bigint LANGUAGE sql AS $$
        UPDATE bs_accounts SET seq = seq + 1 WHERE id = a RETURNING seq
$$;

-- The states of p (and with below, of everything below it) end at until.
CREATE OR REPLACE FUNCTION bs_history_close(a text, p bytea, below boolean, until bigint) RETURNS void
LANGUAGE sql AS $$
        INSERT INTO bs_versions (account, path, version, kind, sha, size, mode, mtime_ns, target, device,
                                 since, since_time, replaced_seq, until_time)
        SELECT account, path, version, kind, sha, size, mode, mtime_ns, target, device,
               since, time, until, bs_now()
        FROM bs_entries
        WHERE account = a AND (path = p OR (below AND path >= bs_below_lo(p) AND path < bs_below_hi(p)))
$$;

CREATE OR REPLACE FUNCTION bs_log_add(a text, s bigint, dev bytea, o smallint, e bs_entries, p bytea, p2 bytea)
RETURNS void LANGUAGE sql AS $$
        INSERT INTO bs_log (account, seq, device, op, kind, path, path2, size, mode, mtime_ns, sha, time)
        VALUES (a, s, dev, o, e.kind, p, p2, e.size, e.mode, e.mtime_ns, e.sha, bs_now())
$$;

CREATE OR REPLACE FUNCTION bs_entry_set(e bs_entries) RETURNS void LANGUAGE sql AS $$
        INSERT INTO bs_entries VALUES (e.*)
        ON CONFLICT (account, path) DO UPDATE SET
                kind = excluded.kind, size = excluded.size, mode = excluded.mode,
                mtime_ns = excluded.mtime_ns, sha = excluded.sha, target = excluded.target,
                version = excluded.version, device = excluded.device, since = excluded.since,
                time = excluded.time
$$;

-- A file's new content. The object is stored already (bs_objects).
CREATE OR REPLACE FUNCTION bs_put(a text, dev bytea, p bytea, base bigint, sz bigint, md integer,
                                  mt bigint, h bytea) RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        had boolean;
        s bigint;
BEGIN
        IF NOT bs_lock(a) OR NOT bs_parent_ok(a, p) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = p;
        had := FOUND;
        IF had AND e.kind <> 1 THEN
                RETURN (-116, 0::bigint);
        END IF;
        -- A repeat whose ACK was lost, or the same save again. The same
        -- content with another mode or mtime on an old base is another
        -- computer's change: a conflict.
        IF had AND e.sha = h AND (e.mode & 4095) = (md & 4095) AND e.mtime_ns = mt THEN
                RETURN (1, e.version);
        END IF;
        IF COALESCE(e.version, 0) <> base THEN
                RETURN (-116, 0::bigint);
        END IF;
        s := bs_next_seq(a);
        IF had THEN
                PERFORM bs_history_close(a, p, false, s);
        END IF;
        e := ROW(a, p, 1, sz, md & 4095, mt, h, NULL, s, dev, s, bs_now());
        PERFORM bs_entry_set(e);
        PERFORM bs_log_add(a, s, dev, 1::smallint, e, p, NULL);
        RETURN (0, s);
END $$;

-- A file's new mode and mtime, its content (h) unchanged.
CREATE OR REPLACE FUNCTION bs_attr(a text, dev bytea, p bytea, base bigint, md integer, mt bigint, h bytea)
RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        s bigint;
BEGIN
        IF NOT bs_lock(a) OR NOT bs_parent_ok(a, p) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = p;
        IF NOT FOUND THEN
                RETURN (-2, 0::bigint);
        END IF;
        IF e.kind <> 1 OR e.sha <> h THEN
                RETURN (-116, 0::bigint);
        END IF;
        IF (e.mode & 4095) = (md & 4095) AND e.mtime_ns = mt THEN
                RETURN (1, e.version);
        END IF;
        IF base <> e.version THEN
                RETURN (-116, 0::bigint);
        END IF;
        s := bs_next_seq(a);
        PERFORM bs_history_close(a, p, false, s);
        e.mode := md & 4095;
        e.mtime_ns := mt;
        e.version := s;
        e.since := s;
        e.device := dev;
        e.time := bs_now();
        PERFORM bs_entry_set(e);
        PERFORM bs_log_add(a, s, dev, 1::smallint, e, p, NULL);
        RETURN (0, s);
END $$;

-- A new directory, or a new mode for one (the last one sent wins: a
-- directory holds no content to lose).
CREATE OR REPLACE FUNCTION bs_mkdir(a text, dev bytea, p bytea, base bigint, md integer, mt bigint)
RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        s bigint;
BEGIN
        IF NOT bs_lock(a) OR NOT bs_parent_ok(a, p) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = p;
        IF FOUND AND e.kind = 2 THEN
                IF (e.mode & 4095) = (md & 4095) THEN
                        RETURN (1, e.version);
                END IF;
                s := bs_next_seq(a);
                PERFORM bs_history_close(a, p, false, s);
                e.mode := md & 4095;
                e.version := s;
                e.since := s;
                e.device := dev;
                e.time := bs_now();
        ELSIF FOUND OR base <> 0 THEN
                RETURN (-116, 0::bigint);
        ELSE
                s := bs_next_seq(a);
                e := ROW(a, p, 2, 0, md & 4095, mt, NULL, NULL, s, dev, s, bs_now());
        END IF;
        PERFORM bs_entry_set(e);
        PERFORM bs_log_add(a, s, dev, 2::smallint, e, p, NULL);
        RETURN (0, s);
END $$;

CREATE OR REPLACE FUNCTION bs_symlink(a text, dev bytea, p bytea, base bigint, tgt bytea, mt bigint)
RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        had boolean;
        s bigint;
BEGIN
        IF length(tgt) = 0 OR length(tgt) > 4096 THEN
                RETURN (-22, 0::bigint);
        END IF;
        IF NOT bs_lock(a) OR NOT bs_parent_ok(a, p) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = p;
        had := FOUND;
        IF had AND e.kind = 3 AND e.target = tgt THEN
                RETURN (1, e.version);
        END IF;
        IF (had AND e.kind <> 3) OR COALESCE(e.version, 0) <> base THEN
                RETURN (-116, 0::bigint);
        END IF;
        s := bs_next_seq(a);
        IF had THEN
                PERFORM bs_history_close(a, p, false, s);
        END IF;
        e := ROW(a, p, 3, length(tgt), 511, mt, NULL, tgt, s, dev, s, bs_now());
        PERFORM bs_entry_set(e);
        PERFORM bs_log_add(a, s, dev, 5::smallint, e, p, tgt);
        RETURN (0, s);
END $$;

-- Delete p and, for a directory, everything below it; all kept as history.
CREATE OR REPLACE FUNCTION bs_delete(a text, dev bytea, p bytea, base bigint)
RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        s bigint;
BEGIN
        IF NOT bs_lock(a) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = p;
        IF NOT FOUND THEN
                RETURN (1, 0::bigint);
        END IF;
        IF base <> e.version THEN
                RETURN (-116, 0::bigint);
        END IF;
        s := bs_next_seq(a);
        PERFORM bs_history_close(a, p, e.kind = 2, s);
        DELETE FROM bs_entries WHERE account = a
                AND (path = p OR (path >= bs_below_lo(p) AND path < bs_below_hi(p)));
        e.device := dev;
        PERFORM bs_log_add(a, s, dev, 3::smallint, e, p, NULL);
        RETURN (0, s);
END $$;

-- Move src to dst; an entry at dst (base_dst <> 0) is replaced and kept.
-- Entries below a moved directory keep their versions (an agent's base)
-- but their state at the new path begins now.
CREATE OR REPLACE FUNCTION bs_move(a text, dev bytea, src bytea, base_src bigint, dst bytea, base_dst bigint)
RETURNS bs_result LANGUAGE plpgsql AS $$
DECLARE
        e bs_entries;
        t bs_entries;
        s bigint;
BEGIN
        -- Into itself, onto itself, or over its own parent.
        IF src = dst OR position(bs_below_lo(src) IN dst) = 1 OR position(bs_below_lo(dst) IN src) = 1 THEN
                RETURN (-22, 0::bigint);
        END IF;
        IF NOT bs_lock(a) THEN
                RETURN (-2, 0::bigint);
        END IF;
        SELECT * INTO e FROM bs_entries WHERE account = a AND path = src;
        SELECT * INTO t FROM bs_entries WHERE account = a AND path = dst;
        IF e.path IS NULL OR e.version <> base_src OR COALESCE(t.version, 0) <> base_dst THEN
                RETURN (-116, 0::bigint);
        END IF;
        IF NOT bs_parent_ok(a, src) OR NOT bs_parent_ok(a, dst) THEN
                RETURN (-2, 0::bigint);
        END IF;
        -- The rewritten paths below must still fit the path rules.
        IF e.kind = 2 AND length(dst) > length(src) AND EXISTS (
                SELECT 1 FROM bs_entries WHERE account = a AND path >= bs_below_lo(src)
                        AND path < bs_below_hi(src) AND length(path) + length(dst) - length(src) > 4096) THEN
                RETURN (-22, 0::bigint);
        END IF;
        s := bs_next_seq(a);
        IF t.path IS NOT NULL THEN
                PERFORM bs_history_close(a, dst, t.kind = 2, s);
                DELETE FROM bs_entries WHERE account = a
                        AND (path = dst OR (path >= bs_below_lo(dst) AND path < bs_below_hi(dst)));
        END IF;
        PERFORM bs_history_close(a, src, true, s);
        UPDATE bs_entries SET path = dst || substring(path FROM length(src) + 1), since = s, time = bs_now()
                WHERE account = a AND path >= bs_below_lo(src) AND path < bs_below_hi(src);
        DELETE FROM bs_entries WHERE account = a AND path = src;
        e.path := dst;
        e.version := s;
        e.since := s;
        e.device := dev;
        e.time := bs_now();
        PERFORM bs_entry_set(e);
        PERFORM bs_log_add(a, s, dev, 4::smallint, e, src, dst);
        RETURN (0, s);
END $$;

-- Tell every node that a's sequence advanced (delivered at commit).
CREATE OR REPLACE FUNCTION bs_announce(a text) RETURNS void LANGUAGE sql AS $$
        SELECT pg_notify('backupsync', a || ' ' || seq) FROM bs_accounts WHERE id = a
$$;

-- Pruning (as the embedded backend prunes: local-prune.c). Drop one kept
-- state: its time goes to the state before it at its path (that one's
-- end moves up), or, for the path's first kept state, to the state after
-- it (its beginning moves back), so the tree as of any moment still
-- shows the path with the nearest older content kept.
CREATE OR REPLACE FUNCTION bs_drop_version(a text, vid bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
        v bs_versions;
BEGIN
        DELETE FROM bs_versions WHERE account = a AND id = vid RETURNING * INTO v;
        IF NOT FOUND THEN
                RETURN;
        END IF;
        UPDATE bs_versions SET replaced_seq = v.replaced_seq
                WHERE account = a AND path = v.path AND replaced_seq = v.since;
        IF FOUND THEN
                RETURN;
        END IF;
        UPDATE bs_versions SET since = v.since WHERE account = a AND path = v.path AND since = v.replaced_seq;
        UPDATE bs_entries SET since = v.since WHERE account = a AND path = v.path AND since = v.replaced_seq;
END $$;

-- The space a's kept contents take, each counted once, those of current
-- files not at all.
CREATE OR REPLACE FUNCTION bs_history_bytes(a text) RETURNS bigint LANGUAGE sql STABLE AS $$
        SELECT COALESCE(SUM(size), 0)::bigint FROM (
                SELECT MAX(v.size) AS size FROM bs_versions v
                WHERE v.account = a AND v.kind = 1 AND v.sha IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM bs_entries e WHERE e.account = a AND e.sha = v.sha)
                GROUP BY v.sha) x
$$;

-- One slice of pruning a as of now, at most budget rows, under the
-- account's row lock: the states the retention no longer keeps (every
-- state younger than keep_all, then the newest per hour until
-- keep_hourly, per day until keep_daily, per week until keep_versions;
-- age counts from when the state ended), then, over max_bytes, the oldest
-- states past keep_all, then the log before keep_versions (log_floor
-- records where it begins). Returns what it removed and, on the slice
-- that found nothing left to do, the history's size (else -1).
CREATE OR REPLACE FUNCTION bs_prune(a text, now bigint, keep_all bigint, keep_hourly bigint, keep_daily bigint,
                                    keep_versions bigint, max_bytes bigint, budget integer,
                                    OUT versions integer, OUT log_records integer, OUT history bigint)
LANGUAGE plpgsql AS $$
DECLARE
        d record;
        ids bigint[] := '{}';
        total bigint;
        excess bigint;
        seen bigint := 0;
        target bigint;
        fl bigint;
        cur bigint;
        upto bigint;
BEGIN
        versions := 0;
        log_records := 0;
        history := -1;
        IF NOT bs_lock(a) THEN
                RETURN;
        END IF;
        SELECT array_agg(id ORDER BY replaced_seq DESC) INTO ids FROM (
                SELECT id, replaced_seq FROM (
                        SELECT id, replaced_seq, age, tier,
                               row_number() OVER (PARTITION BY path, tier, bucket ORDER BY replaced_seq DESC) AS rank
                        FROM (SELECT id, path, replaced_seq, now - until_time AS age,
                                     CASE WHEN now - until_time < keep_all THEN 0
                                          WHEN now - until_time < keep_hourly THEN 1
                                          WHEN now - until_time < keep_daily THEN 2 ELSE 3 END AS tier,
                                     CASE WHEN now - until_time < keep_all THEN id
                                          WHEN now - until_time < keep_hourly THEN until_time / 3600
                                          WHEN now - until_time < keep_daily THEN until_time / 86400
                                          ELSE until_time / 604800 END AS bucket
                              FROM bs_versions WHERE account = a) x) y
                WHERE (keep_versions > 0 AND age >= keep_versions) OR (tier > 0 AND rank > 1)
                ORDER BY replaced_seq DESC LIMIT budget) z;
        IF ids IS NULL AND max_bytes > 0 THEN
                total := bs_history_bytes(a);
                IF total > max_bytes THEN
                        excess := total - max_bytes;
                        ids := '{}';
                        FOR d IN SELECT id, size FROM bs_versions
                                 WHERE account = a AND until_time < now - keep_all
                                 ORDER BY replaced_seq LIMIT budget LOOP
                                EXIT WHEN seen >= excess;
                                ids := d.id || ids; -- dropping goes newest first
                                seen := seen + d.size;
                        END LOOP;
                END IF;
        END IF;
        IF ids IS NOT NULL THEN
                FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
                        PERFORM bs_drop_version(a, ids[i]);
                END LOOP;
                versions := coalesce(array_length(ids, 1), 0);
        END IF;
        IF keep_versions > 0 THEN
                SELECT COALESCE(MAX(seq), 0) INTO target FROM bs_log WHERE account = a AND time < now - keep_versions;
                SELECT log_floor, seq INTO fl, cur FROM bs_accounts WHERE id = a;
                -- Never the last record: the sequence must stay readable from the log.
                target := LEAST(target, cur - 1);
                IF target > fl THEN
                        upto := LEAST(target, fl + budget);
                        DELETE FROM bs_log WHERE account = a AND seq <= upto;
                        GET DIAGNOSTICS log_records = ROW_COUNT;
                        UPDATE bs_accounts SET log_floor = upto WHERE id = a;
                END IF;
        END IF;
        IF versions = 0 AND log_records = 0 THEN
                history := bs_history_bytes(a);
        END IF;
END $$;

-- Objects and the collector. A batch that stores objects holds its
-- account's objects lock shared from before its first upload until its
-- transaction ended; the collector holds it exclusively while it removes
-- objects nothing names. So no object is removed between its upload and
-- the commit that names it. These are session locks: a lost connection
-- lets go of them, and bs_objects_held() then refuses the transaction
-- that relied on one (40001: run it again).
CREATE OR REPLACE FUNCTION bs_objects_share(a text) RETURNS boolean LANGUAGE sql AS
$$ SELECT pg_try_advisory_lock_shared(1651663679, hashtext(a)) $$;
CREATE OR REPLACE FUNCTION bs_objects_unshare(a text) RETURNS boolean LANGUAGE sql AS
$$ SELECT pg_advisory_unlock_shared(1651663679, hashtext(a)) $$;
CREATE OR REPLACE FUNCTION bs_objects_collect(a text) RETURNS boolean LANGUAGE sql AS
$$ SELECT pg_try_advisory_lock(1651663679, hashtext(a)) $$;
CREATE OR REPLACE FUNCTION bs_objects_uncollect(a text) RETURNS boolean LANGUAGE sql AS
$$ SELECT pg_advisory_unlock(1651663679, hashtext(a)) $$;

CREATE OR REPLACE FUNCTION bs_objects_held(a text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                       AND classid = 1651663679::oid AND objid = hashtext(a)::oid AND objsubid = 2
                       AND mode = 'ShareLock' AND granted) THEN
                RAISE EXCEPTION 'the objects lock of account % is not held', a USING ERRCODE = '40001';
        END IF;
END $$;

-- Objects of a that no entry or kept version names: what the collector removes.
CREATE OR REPLACE FUNCTION bs_unnamed(a text, budget integer) RETURNS TABLE (sha bytea, size bigint)
LANGUAGE sql STABLE AS $$
        SELECT o.sha, o.size FROM bs_objects o WHERE o.account = a
                AND NOT EXISTS (SELECT 1 FROM bs_entries e WHERE e.account = a AND e.sha = o.sha)
                AND NOT EXISTS (SELECT 1 FROM bs_versions v WHERE v.account = a AND v.sha = o.sha)
        LIMIT budget
$$;

-- Big contents as chunks (cluster-chunks.c): bs_objects.recipe lists a
-- chunked content's chunks, 36 bytes each (length, 4 bytes big-endian,
-- and SHA-256); each chunk is one object accounts/ID/k/SHA, recorded in
-- bs_chunks once per account with the number of recipe entries naming it.
ALTER TABLE bs_objects ADD COLUMN IF NOT EXISTS recipe bytea;
CREATE TABLE IF NOT EXISTS bs_chunks (
        account text NOT NULL REFERENCES bs_accounts(id) ON DELETE CASCADE,
        sha bytea NOT NULL,
        size integer NOT NULL,
        refs integer NOT NULL,
        PRIMARY KEY (account, sha)
);
CREATE INDEX IF NOT EXISTS bs_chunks_unused ON bs_chunks (account) WHERE refs <= 0;

-- The entries of a recipe, each chunk once with how often it is named.
CREATE OR REPLACE FUNCTION bs_recipe_chunks(rec bytea) RETURNS TABLE (sha bytea, size integer, n bigint)
LANGUAGE sql IMMUTABLE AS $$
        SELECT c, max(len), count(*) FROM (
                SELECT substring(rec FROM i * 36 + 5 FOR 32) AS c,
                       (get_byte(rec, i * 36) << 24) | (get_byte(rec, i * 36 + 1) << 16)
                       | (get_byte(rec, i * 36 + 2) << 8) | get_byte(rec, i * 36 + 3) AS len
                FROM generate_series(0, length(rec) / 36 - 1) i) x
        GROUP BY c
$$;

-- Record a stored content once (and count the chunks its recipe names).
CREATE OR REPLACE FUNCTION bs_object_add(a text, h bytea, sz bigint, t bigint, rec bytea) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
        INSERT INTO bs_objects (account, sha, size, stored, recipe) VALUES (a, h, sz, t, rec) ON CONFLICT DO NOTHING;
        IF FOUND AND rec IS NOT NULL THEN
                INSERT INTO bs_chunks (account, sha, size, refs)
                SELECT a, c.sha, c.size, c.n FROM bs_recipe_chunks(rec) c
                ON CONFLICT (account, sha) DO UPDATE SET refs = bs_chunks.refs + excluded.refs;
        END IF;
END $$;

-- Forget a stored content (the collector removes its object first), and
-- the names its recipe gave its chunks.
CREATE OR REPLACE FUNCTION bs_object_drop(a text, h bytea) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
        rec bytea;
BEGIN
        DELETE FROM bs_objects WHERE account = a AND sha = h RETURNING recipe INTO rec;
        IF rec IS NOT NULL THEN
                UPDATE bs_chunks k SET refs = k.refs - c.n FROM bs_recipe_chunks(rec) c
                WHERE k.account = a AND k.sha = c.sha;
        END IF;
END $$;

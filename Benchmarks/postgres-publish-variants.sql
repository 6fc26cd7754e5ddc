-- Variants of aviary_publish_one (AviaryMessaging's PostgreSQL schema v6) that PostgresFloor's
-- wirefn mode calls when FLOOR_FUNCTION names one, to price each part of a single publish on the
-- server.
-- Create them in a database the message log has set up (with a topic 'publish' of 8 partitions):
--   psql -d DB -f Benchmarks/postgres-publish-variants.sql
-- Measurement only: aviary_publish_one_slim, _nojoin, _bare and _notify write topic id 1, and the
-- _lock variant leaves last_offset as it is, so do not mix them with the log's own publishes on
-- one table (empty aviary_messages between runs). See the messaging performance notes,
-- twenty-second session.

CREATE OR REPLACE FUNCTION aviary_publish_one_lock(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
    p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE v_id INTEGER; v_offset BIGINT; v_notified TEXT;
BEGIN
    SELECT t.id INTO v_id FROM aviary_topics t WHERE t.name = p_topic AND t.partitions = p_partition_count
        AND NOT EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = p_topic AND s.deliver_at <= p_now);
    IF NOT FOUND THEN RETURN NULL; END IF;
    PERFORM pg_advisory_xact_lock(v_id, p_partition);
    WITH inserted AS (
        INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        SELECT v_id, p_partition, greatest(p.last_offset, (SELECT coalesce(max(m.msg_offset), 0) FROM aviary_messages m
            WHERE m.topic_id = v_id AND m.partition = p_partition)) + 1, p_now, p_bytes, p_key, p_event, p_headers
        FROM aviary_partitions p WHERE p.topic = p_topic AND p.partition = p_partition
        RETURNING msg_offset
    )
    SELECT i.msg_offset INTO v_offset FROM inserted i;
    SELECT pg_notify(p_channel, p_topic)::TEXT INTO v_notified
    WHERE current_setting('transaction_isolation') <> 'read committed'
        OR EXISTS (SELECT 1 FROM aviary_listeners l WHERE l.topic = p_topic);
    RETURN v_offset;
END
$$;

CREATE OR REPLACE FUNCTION aviary_publish_one_slim(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
    p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE v_offset BIGINT; v_notified TEXT;
BEGIN
    UPDATE aviary_partitions p SET last_offset = p.last_offset + 1
    WHERE p.topic = p_topic AND p.partition = p_partition
    RETURNING p.last_offset INTO v_offset;
    WITH inserted AS (
        INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        VALUES (1, p_partition, v_offset, p_now, p_bytes, p_key, p_event, p_headers)
    )
    SELECT pg_notify(p_channel, p_topic)::TEXT INTO v_notified
    WHERE current_setting('transaction_isolation') <> 'read committed'
        OR EXISTS (SELECT 1 FROM aviary_listeners l WHERE l.topic = p_topic);
    RETURN v_offset;
END
$$;
CREATE OR REPLACE FUNCTION aviary_publish_one_bare(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
    p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE v_offset BIGINT;
BEGIN
    UPDATE aviary_partitions p SET last_offset = p.last_offset + 1
    WHERE p.topic = p_topic AND p.partition = p_partition
    RETURNING p.last_offset INTO v_offset;
    INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        VALUES (1, p_partition, v_offset, p_now, p_bytes, p_key, p_event, p_headers);
    RETURN v_offset;
END
$$;

CREATE OR REPLACE FUNCTION aviary_publish_one_nojoin(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
    p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE v_offset BIGINT; v_notified TEXT;
BEGIN
    UPDATE aviary_partitions p SET last_offset = p.last_offset + 1
    WHERE p.topic = p_topic AND p.partition = p_partition
        AND NOT EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = p_topic AND s.deliver_at <= p_now)
    RETURNING p.last_offset INTO v_offset;
    WITH inserted AS (
        INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        VALUES (1, p_partition, v_offset, p_now, p_bytes, p_key, p_event, p_headers)
    )
    SELECT pg_notify(p_channel, p_topic)::TEXT INTO v_notified
    WHERE current_setting('transaction_isolation') <> 'read committed'
        OR EXISTS (SELECT 1 FROM aviary_listeners l WHERE l.topic = p_topic);
    RETURN v_offset;
END
$$;

CREATE OR REPLACE FUNCTION aviary_publish_one_notify(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
    p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE v_offset BIGINT;
BEGIN
    UPDATE aviary_partitions p SET last_offset = p.last_offset + 1
    WHERE p.topic = p_topic AND p.partition = p_partition
    RETURNING p.last_offset INTO v_offset;
    INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        VALUES (1, p_partition, v_offset, p_now, p_bytes, p_key, p_event, p_headers);
    PERFORM pg_notify(p_channel, p_topic);
    RETURN v_offset;
END
$$;

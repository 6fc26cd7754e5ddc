// The raw SQLite floor for scripts/bench-broker.sh: plain inserts of rows of a given size into one
// table, WAL and synchronous=FULL as SQLiteMessageLog runs, each transaction BEGIN IMMEDIATE ...
// COMMIT with one prepared statement, for a number of seconds. Prints one JSON line.
//   sqlite-floor DB ROWS_PER_TRANSACTION ROW_BYTES SECONDS
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "sqlite-floor: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: sqlite-floor DB ROWS_PER_TRANSACTION ROW_BYTES SECONDS\n");
        return 2;
    }
    int batch = atoi(argv[2]), bytes = atoi(argv[3]);
    double seconds = atof(argv[4]);
    sqlite3 *db;
    check(sqlite3_open(argv[1], &db), db, "open");
    check(sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                           "CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, appended_at INTEGER NOT NULL)",
                       NULL, NULL, NULL), db, "schema");
    sqlite3_stmt *begin, *insert, *commit;
    check(sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL), db, "prepare begin");
    check(sqlite3_prepare_v2(db, "INSERT INTO raw (payload, appended_at) VALUES (?, ?)", -1, &insert, NULL), db, "prepare insert");
    check(sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL), db, "prepare commit");
    char *payload = malloc(bytes + 1);
    memset(payload, 'x', bytes);
    payload[bytes] = 0;
    // Warm-up: 4 MB in one transaction, past the first automatic checkpoint (1000 pages), so that
    // the measured commits reuse WAL space as a long-running log does instead of growing the file.
    check(sqlite3_step(begin), db, "begin");
    sqlite3_reset(begin);
    for (long i = 0; i < 4L * 1024 * 1024 / (bytes > 0 ? bytes : 1); i++) {
        sqlite3_bind_text(insert, 1, payload, bytes, SQLITE_STATIC);
        sqlite3_bind_int64(insert, 2, 0);
        check(sqlite3_step(insert), db, "insert");
        sqlite3_reset(insert);
    }
    check(sqlite3_step(commit), db, "commit");
    sqlite3_reset(commit);

    long rows = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        check(sqlite3_step(begin), db, "begin");
        sqlite3_reset(begin);
        for (int i = 0; i < batch; i++) {
            // Rows differ a little, as messages do.
            snprintf(payload, bytes + 1 > 12 ? 12 : bytes + 1, "%011ld", rows);
            payload[strlen(payload)] = bytes > 11 ? 'x' : 0;
            sqlite3_bind_text(insert, 1, payload, bytes, SQLITE_STATIC);
            sqlite3_bind_int64(insert, 2, (sqlite3_int64)(t * 1000));
            check(sqlite3_step(insert), db, "insert");
            sqlite3_reset(insert);
            rows++;
        }
        check(sqlite3_step(commit), db, "commit");
        sqlite3_reset(commit);
        t = now();
    }
    double elapsed = now() - start;
    printf("{\"rows\":%ld,\"seconds\":%.3f,\"per_second\":%.1f}\n", rows, elapsed, rows / elapsed);
    sqlite3_finalize(begin);
    sqlite3_finalize(insert);
    sqlite3_finalize(commit);
    sqlite3_close(db);
    return 0;
}

"""What the end-to-end benchmarks share: the pipeline's C floor, the producer, the relay.

``bench/pipeline.py`` (producer, relay, server and consumer at once) and ``bench/e2e.py``
(producer, relay and server: until the relay's queue is empty) run the same stages, so they
measure against one floor: the C program below, each stage its own process, doing the same
file operations per message and per batch as dropr and nothing more:

- ``produce``: create, write, close, rename into its bucket of the queue, making the bucket
  when it is missing (``fdatasync`` and the bucket's ``fsync`` with sync); with a count per
  put above 1 (dropr's ``fastput_many``) one such file holds that many messages, and the
  forwarder sends it as one record, whose messages the receiver stages as it does others.
  As dropr's puts, it writes into an acknowledged file of ``free/`` when it has one (listed
  when its list is empty, an empty ``free/`` again only every 64 puts): rename it into
  ``tmp/``, open it, cut it to the new length, write, close, rename into the bucket;
- ``forward``: list the queue's buckets in order (removing the empty ones), open, read and
  close each file of a batch, write the batch to a loopback TCP socket, up to ``parallel``
  batches in flight (a new one sent as soon as one is answered, as the relay keeps that many
  requests in flight, passing over the names in flight), take each batch's one-byte
  acknowledgement and take its files out of the queue as the relay does without a retention:
  ``lstat`` each and rename a small one into ``free/`` while it holds fewer than
  :data:`dropr.spool.FREE_FILES` (counted again when full, at most every
  :data:`dropr.relay.disposal.RECOUNT_SECONDS`), unlink those put in the last ``fresh``
  seconds (:func:`dropr.relay.disposal.fresh_seconds`), rename the others into ``sent/``,
  which four sweeper threads of the forwarder unlink, each its share of the names; prints
  the time the last file left the queue;
- ``receive``: read a batch from the socket, write its messages one after another into
  shared staged files of 64 KiB (every batch that has arrived meanwhile too), ``syncfs``,
  hard-link each message's name into the store's queue, ``syncfs``, acknowledge each batch
  (the server shares its flushes so), unlink the staged names; the syncs, links and
  acknowledgements of a group run on a thread of their own while the next group is staged,
  as the server's commits run beside its event loop;
- ``consume``: list the store's queue, set the lease (``utimensat``) and rename each file of
  a claim into ``claimed/``, ``fstatat`` each name for its file, open, read and close each
  file once a claim (the names of a shared file are read with the first of them, as dropr's
  claims read theirs), rename each name into ``processed/``; prints the time the last one
  was processed.

The floor checks nothing, probes for no duplicate and parses nothing, so it is the fastest
any design doing these file operations can be.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator

from dropr.relay.disposal import RECOUNT_SECONDS, fresh_seconds
from dropr.spool import FREE_FILES, REUSE_BYTES

PIPELINE_FLOOR = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NAME_MAX_ 256
#define FREE_FILES @FREE_FILES@      /* dropr.spool.FREE_FILES */
#define REUSE_BYTES @REUSE_BYTES@    /* dropr.spool.REUSE_BYTES */
#define RECOUNT_SECONDS @RECOUNT@    /* dropr.relay.disposal.RECOUNT_SECONDS */
static void die(const char *what) { perror(what); exit(1); }
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
static int opendirfd(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC); if (fd < 0) die(path); return fd;
}
static void put_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) die("write"); p += w; n -= (size_t)w; }
}
static void get_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n) { ssize_t r = read(fd, p, n); if (r <= 0) die("read"); p += r; n -= (size_t)r; }
}
/* Up to max paths BUCKET/NAME of a bucketed queue, buckets in order; empty buckets of the
   past are removed, as the relay prunes them. Returns how many. */
static int by_name(const void *a, const void *b) { return strcmp(a, b); }
static long list_buckets(int queue, char (*names)[NAME_MAX_], long max) {
    static char buckets[4096][16];
    DIR *dir = fdopendir(dup(queue)); if (!dir) die("fdopendir");
    rewinddir(dir);
    long nb = 0, n = 0; struct dirent *e;
    while (nb < 4096 && (e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.') strcpy(buckets[nb++], e->d_name);
    closedir(dir);
    qsort(buckets, nb, sizeof buckets[0], by_name);
    for (long b = 0; b < nb && n < max; b++) {
        int fd = openat(queue, buckets[b], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) continue;
        DIR *bucket = fdopendir(fd); if (!bucket) die("fdopendir");
        long before = n;
        while (n < max && (e = readdir(bucket)) != NULL)
            if (e->d_name[0] != '.') snprintf(names[n++], NAME_MAX_, "%s/%s", buckets[b], e->d_name);
        closedir(bucket);
        if (n == before && b + 1 < nb) unlinkat(queue, buckets[b], AT_REMOVEDIR);
    }
    return n;
}

/* Up to max names of a directory, not starting with a dot; returns how many. */
static long list(int dirfd, char (*names)[NAME_MAX_], long max) {
    DIR *dir = fdopendir(dup(dirfd)); if (!dir) die("fdopendir");
    rewinddir(dir);
    long n = 0; struct dirent *e;
    while (n < max && (e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.') strcpy(names[n++], e->d_name);
    closedir(dir);
    return n;
}

/* One file per message, or with per_file above 1 one file per that many (a batch); each
   written into a file of free/ when one is there. */
#define LOOK_EVERY 64
static int produce(const char *tmp_dir, const char *queue_dir, const char *free_dir, long count, long size,
                   int sync, long per_file) {
    int tmp = opendirfd(tmp_dir), queue = opendirfd(queue_dir), free_fd = opendirfd(free_dir);
    size *= per_file;
    char *buf = malloc(size + 1); memset(buf, 'x', size);
    char tmp_name[64], name[NAME_MAX_], path[NAME_MAX_ + 16];
    char (*reusable)[NAME_MAX_] = malloc(FREE_FILES * NAME_MAX_);
    long left = 0, idle = 0;
    struct timespec t;
    printf("%.9f\n", now()); fflush(stdout);
    for (long i = 0; i < count / per_file; i++) {
        clock_gettime(CLOCK_REALTIME, &t);
        snprintf(tmp_name, sizeof tmp_name, "%016llx%08x%06lx",
                 (long long)t.tv_sec * 1000000000LL + t.tv_nsec, 0x1234abcdU, i & 0xFFFFFF);
        snprintf(name, sizeof name, "9%s+http%%3A%%2F%%2F127.0.0.1%%3A8080%%2F+common+%lx+%08x",
                 tmp_name, size, 0U);
        if (!left && !idle) { left = list(free_fd, reusable, FREE_FILES); if (!left) idle = LOOK_EVERY; }
        else if (!left) idle--;
        int fd = -1;
        if (left && renameat(free_fd, reusable[--left], tmp, tmp_name) == 0) {
            fd = openat(tmp, tmp_name, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ftruncate(fd, size)) die("reuse");
        }
        if (fd < 0) fd = openat(tmp, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) die("openat");
        put_all(fd, buf, size);
        if (sync && fdatasync(fd)) die("fdatasync");
        close(fd);
        /* Into its bucket, queue/BUCKET/NAME, as the spool does (BUCKET: the first 9 chars). */
        memcpy(path, name, 9); path[9] = '/'; strcpy(path + 10, name);
        if (renameat(tmp, tmp_name, queue, path) != 0) {
            path[9] = 0;
            if (errno != ENOENT || (mkdirat(queue, path, 0750) && errno != EEXIST)) die("mkdirat");
            path[9] = '/';
            if (renameat(tmp, tmp_name, queue, path) != 0) die("renameat");
        }
        if (sync) {
            path[9] = 0;
            int bucket = openat(queue, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (bucket < 0 || fsync(bucket)) die("fsync");
            close(bucket);
        }
    }
    return 0;
}

/* Reads one batch's files into out (grown as needed); returns its length. */
static size_t pack(int queue, char (*names)[NAME_MAX_], long n, char **out, size_t *cap) {
    static char data[65536];
    size_t used = 4; uint32_t v = htonl((uint32_t)n); memcpy(*out, &v, 4);
    for (long i = 0; i < n; i++) {
        int fd = openat(queue, names[i], O_RDONLY | O_CLOEXEC); if (fd < 0) die("openat");
        ssize_t got = read(fd, data, sizeof data); close(fd);
        if (got < 0) die("read");
        const char *base = strchr(names[i], '/') + 1;
        uint32_t len = strlen(base);
        while (used + 8 + len + (size_t)got > *cap) { *cap *= 2; *out = realloc(*out, *cap); }
        v = htonl(len); memcpy(*out + used, &v, 4); memcpy(*out + used + 4, base, len);
        v = htonl((uint32_t)got); memcpy(*out + used + 4 + len, &v, 4);
        memcpy(*out + used + 8 + len, data, got); used += 8 + len + got;
    }
    return used;
}

/* The forwarder keeps up to `parallel` batches in flight, as the relay keeps that many
   requests: a sender thread lists the queue, passes over the names of batches in flight and
   sends the next batch as soon as a slot is free; an acknowledging thread takes each batch's
   one-byte answer (they come in order), takes its files out of the queue on REMOVERS threads
   (a fresh one unlinked, an older one renamed into sent/ for the sweepers), as the relay
   does, and frees its slot.
   Each slot keeps its names in a small open-addressing table, so passing over them costs a
   hash and a comparison a name. */
#define SLOT_TABLE 4096
struct slot { long n; char (*names)[NAME_MAX_]; int table[SLOT_TABLE]; };
struct flight {
    int queue, sent, free_fd, sock, parallel; long files, per_file, head, tail; double ended, counted;
    long long fresh_ns; long renamed, swept, in_free; int acknowledged;
    struct slot *slots; char (*listing)[NAME_MAX_]; pthread_mutex_t lock; pthread_cond_t freed;
};
static long long realtime_ns(void) {
    struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static unsigned name_hash(const char *name) {
    unsigned h = 2166136261u;
    for (const char *c = name; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
    return h;
}
static int in_slot(const struct slot *s, const char *name) {
    for (unsigned i = name_hash(name) % SLOT_TABLE; s->table[i]; i = (i + 1) % SLOT_TABLE)
        if (!strcmp(s->names[s->table[i] - 1], name)) return 1;
    return 0;
}
/* A remover's share of an acknowledged batch: every REMOVERS-th name from index. */
#define REMOVERS 4
struct removal { struct flight *f; struct slot *s; long index, room; long long fresh_after; };
static void *remove_share(void *arg) {
    const struct removal *r = arg;
    long freed = 0;
    for (long i = r->index; i < r->s->n; i += REMOVERS) {
        const char *name = r->s->names[i], *base = strchr(name, '/') + 1;
        char put[17]; memcpy(put, base + 1, 16); put[16] = 0;  /* the id's nanoseconds */
        struct stat info;
        if (freed < r->room && fstatat(r->f->queue, name, &info, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(info.st_mode)
            && info.st_nlink == 1 && info.st_size <= REUSE_BYTES) {
            if (renameat(r->f->queue, name, r->f->free_fd, base)) die("renameat free");
            freed++;
        } else if ((long long)strtoull(put, NULL, 16) >= r->fresh_after) {
            if (unlinkat(r->f->queue, name, 0)) die("unlinkat");
        } else {
            if (renameat(r->f->queue, name, r->f->sent, base)) die("renameat sent");
            __atomic_add_fetch(&r->f->renamed, 1, __ATOMIC_RELAXED);
        }
    }
    __atomic_add_fetch(&r->f->in_free, freed, __ATOMIC_RELAXED);
    return NULL;
}
static void *acknowledge(void *arg) {
    struct flight *f = arg;
    for (long done = 0; done < f->files;) {
        char ack; get_all(f->sock, &ack, 1);
        struct slot *s = &f->slots[f->tail % f->parallel];
        long long fresh_after = realtime_ns() - f->fresh_ns;
        if (f->in_free >= FREE_FILES && now() - f->counted >= RECOUNT_SECONDS) {
            f->counted = now(); f->in_free = list(f->free_fd, f->listing, FREE_FILES);
        }
        long room = f->in_free < FREE_FILES ? FREE_FILES - f->in_free : 0;
        pthread_t removers[REMOVERS]; struct removal shares[REMOVERS];  /* as the relay's threads */
        for (long i = 0; i < REMOVERS; i++) {
            shares[i] = (struct removal){f, s, i, room / REMOVERS + (i < room % REMOVERS), fresh_after};
            if (pthread_create(&removers[i], NULL, remove_share, &shares[i])) die("pthread_create");
        }
        for (long i = 0; i < REMOVERS; i++) pthread_join(removers[i], NULL);
        done += s->n;
        pthread_mutex_lock(&f->lock);
        memset(s->table, 0, sizeof s->table); s->n = 0; f->tail++;
        pthread_cond_signal(&f->freed);
        pthread_mutex_unlock(&f->lock);
    }
    f->ended = now();
    __atomic_store_n(&f->acknowledged, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Unlinks what the acknowledging thread moved into sent/, SWEEPERS threads at once, each its
   share of the names, until the last batch is acknowledged and sent/ is empty: an unlink of
   an older file can wait for the disk (a file system that discards freed blocks), so the
   relay deletes those off its path, several at a time, and so does this floor. */
#define SWEEPERS 4
struct sweeper { struct flight *f; unsigned index; };
static void *sweep_share(void *arg) {
    const struct sweeper *s = arg;
    struct flight *f = s->f;
    char (*names)[NAME_MAX_] = malloc(4096 * NAME_MAX_);
    for (;;) {
        int last = __atomic_load_n(&f->acknowledged, __ATOMIC_ACQUIRE);
        if (last && __atomic_load_n(&f->swept, __ATOMIC_RELAXED) >= __atomic_load_n(&f->renamed, __ATOMIC_RELAXED))
            break;
        long n = list(f->sent, names, 4096), mine = 0;
        for (long i = 0; i < n; i++) {
            unsigned h = 0;
            for (const char *c = names[i]; *c; c++) h = h * 31 + (unsigned char)*c;
            if (h % SWEEPERS != s->index) continue;
            if (unlinkat(f->sent, names[i], 0) == 0) { __atomic_add_fetch(&f->swept, 1, __ATOMIC_RELAXED); mine++; }
            else if (errno != ENOENT) die("unlinkat");
        }
        if (!mine) usleep(5000);  /* off the path: sent/ may wait, the other stages may not */
    }
    free(names);
    return NULL;
}

/* A file holds per_file messages; prints the time the last file left the queue. */
static int forward(const char *queue_dir, const char *sent_dir, const char *free_dir, int port, long count,
                   long batch, int parallel, long per_file, double fresh) {
    struct flight f = {.queue = opendirfd(queue_dir), .sent = opendirfd(sent_dir), .free_fd = opendirfd(free_dir),
                       .parallel = parallel, .files = count / per_file, .per_file = per_file,
                       .fresh_ns = (long long)(fresh * 1e9), .listing = malloc(FREE_FILES * NAME_MAX_)};
    f.sock = socket(AF_INET, SOCK_STREAM, 0); int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(f.sock, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    setsockopt(f.sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    batch = batch / per_file > 0 ? batch / per_file : 1;
    if (batch >= SLOT_TABLE / 2) batch = SLOT_TABLE / 2 - 1;
    pthread_mutex_init(&f.lock, NULL); pthread_cond_init(&f.freed, NULL);
    f.slots = calloc(parallel, sizeof *f.slots);
    for (int i = 0; i < parallel; i++) f.slots[i].names = malloc(batch * NAME_MAX_);
    long window = batch * (parallel + 1);
    char (*listed)[NAME_MAX_] = malloc(window * NAME_MAX_);
    size_t cap = 1 << 20; char *out = malloc(cap);
    pthread_t acker; if (pthread_create(&acker, NULL, acknowledge, &f)) die("pthread_create");
    pthread_t sweepers[SWEEPERS]; struct sweeper shares[SWEEPERS];
    for (unsigned i = 0; i < SWEEPERS; i++) {
        shares[i] = (struct sweeper){&f, i};
        if (pthread_create(&sweepers[i], NULL, sweep_share, &shares[i])) die("pthread_create");
    }
    for (long sent = 0; sent < f.files;) {
        pthread_mutex_lock(&f.lock);
        while (f.head - f.tail == parallel) pthread_cond_wait(&f.freed, &f.lock);
        pthread_mutex_unlock(&f.lock);
        pthread_mutex_lock(&f.lock); long tail = f.tail; pthread_mutex_unlock(&f.lock);
        long n = list_buckets(f.queue, listed, window), fresh = 0;
        pthread_mutex_lock(&f.lock);
        if (f.tail != tail) { pthread_mutex_unlock(&f.lock); continue; }  /* names acknowledged meanwhile */
        for (long i = 0; i < n; i++) {
            int flying = 0;
            for (long b = f.tail; b < f.head && !flying; b++) flying = in_slot(&f.slots[b % parallel], listed[i]);
            if (!flying && fresh != i) memcpy(listed[fresh], listed[i], NAME_MAX_);
            fresh += !flying;
        }
        long room = parallel - (f.head - f.tail);
        pthread_mutex_unlock(&f.lock);
        if (!fresh) { usleep(200); continue; }
        for (long first = 0; first < fresh && room > 0; first += batch, room--) {
            struct slot *s = &f.slots[f.head % parallel];  /* free: only this thread fills slots */
            s->n = fresh - first < batch ? fresh - first : batch;
            for (long i = 0; i < s->n; i++) {
                memcpy(s->names[i], listed[first + i], NAME_MAX_);
                unsigned h = name_hash(s->names[i]) % SLOT_TABLE;
                while (s->table[h]) h = (h + 1) % SLOT_TABLE;
                s->table[h] = (int)i + 1;
            }
            size_t used = pack(f.queue, s->names, s->n, &out, &cap);
            sent += s->n;  /* now: once sent, the slot is the acknowledging thread's */
            pthread_mutex_lock(&f.lock); f.head++; pthread_mutex_unlock(&f.lock);
            put_all(f.sock, out, used);
        }
    }
    pthread_join(acker, NULL);
    printf("%.9f\n", f.ended); fflush(stdout);
    for (unsigned i = 0; i < SWEEPERS; i++) pthread_join(sweepers[i], NULL);
    return 0;
}

/* A group of staged batches on its way to the store: the committer thread makes it durable
   and acknowledges each batch while the receiving thread stages the next group, as the
   server's commits run on a thread of their own while its event loop stages what arrives. */
#define SHARED_BYTES 65536  /* payload bytes a shared staged file takes, as the server's chunks */
struct group {
    char (*names)[NAME_MAX_]; long *file_of, total, batches, cap, files;  /* file_of: its staged file */
};
static struct {
    pthread_mutex_t lock; pthread_cond_t changed;
    struct group *ready;   /* handed over, not yet taken by the committer */
    struct group *free;    /* given back by the committer, ready to be refilled */
    int stage, store, sock;
} commits = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, -1, -1, -1};

static void *committer(void *unused) {
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&commits.lock);
        while (!commits.ready) pthread_cond_wait(&commits.changed, &commits.lock);
        struct group *g = commits.ready; commits.ready = NULL;
        pthread_cond_broadcast(&commits.changed);
        pthread_mutex_unlock(&commits.lock);
        if (syncfs(commits.store)) die("syncfs");
        char staged[32];
        for (long i = 0; i < g->total; i++) {
            snprintf(staged, sizeof staged, "s%lx", g->file_of[i]);
            if (linkat(commits.stage, staged, commits.store, g->names[i], 0)) die("linkat store");
        }
        if (syncfs(commits.store)) die("syncfs");
        for (long i = 0; i < g->batches; i++) put_all(commits.sock, "a", 1);
        for (long f = g->files - 1; f >= 0 && g->total; f--) {
            snprintf(staged, sizeof staged, "s%lx", g->file_of[0] + f);
            if (unlinkat(commits.stage, staged, 0)) die("unlinkat stage");
        }
        pthread_mutex_lock(&commits.lock);
        while (commits.free) pthread_cond_wait(&commits.changed, &commits.lock);
        commits.free = g;
        pthread_cond_broadcast(&commits.changed);
        pthread_mutex_unlock(&commits.lock);
    }
    return NULL;
}

/* Stages every batch that has arrived, then hands them to the committer, which makes them
   durable together (group commit, as the server shares a flush between requests in flight)
   and acknowledges each while the next are staged; each file received holds per_file
   messages, each staged as a file of its own. */
static int receive(int port, const char *stage_dir, const char *store_dir, long count, long per_file) {
    int stage = opendirfd(stage_dir), store = opendirfd(store_dir);
    int lsock = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof addr) || listen(lsock, 1)) die("bind");
    printf("ready\n"); fflush(stdout);
    int sock = accept(lsock, NULL, NULL); if (sock < 0) die("accept");
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    commits.stage = stage; commits.store = store; commits.sock = sock;
    static struct group groups[2];
    commits.free = &groups[1];
    struct group *g = &groups[0];
    pthread_t thread; if (pthread_create(&thread, NULL, committer, NULL)) die("pthread_create");
    char *data = malloc(1 << 24);
    long next_file = 0;
    for (long done = 0; done < count;) {
        g->total = g->batches = g->files = 0; char peek;
        int fd = -1; long filled = 0; char staged[32];
        do {
            uint32_t v; get_all(sock, &v, 4); long n = ntohl(v) * per_file;
            if (g->total + n > g->cap) {
                g->cap = 2 * (g->total + n); g->names = realloc(g->names, g->cap * NAME_MAX_);
                g->file_of = realloc(g->file_of, g->cap * sizeof(long));
            }
            for (long i = g->total; i < g->total + n; i += per_file) {
                char name[NAME_MAX_];
                get_all(sock, &v, 4); uint32_t len = ntohl(v);
                get_all(sock, name, len); name[len] = 0;
                get_all(sock, &v, 4); uint32_t size = ntohl(v);
                get_all(sock, data, size);
                for (long j = 0; j < per_file; j++) {
                    if (fd < 0 || filled >= SHARED_BYTES) {  /* the next shared staged file */
                        if (fd >= 0) close(fd);
                        snprintf(staged, sizeof staged, "s%lx", next_file++);
                        fd = openat(stage, staged, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
                        if (fd < 0) die("openat stage");
                        g->files++; filled = 0;
                    }
                    snprintf(g->names[i + j], NAME_MAX_, "%s.%lx", name, j);
                    g->file_of[i + j] = next_file - 1;
                    put_all(fd, data + j * (size / per_file), size / per_file);
                    filled += size / per_file;
                }
            }
            g->total += n; g->batches++;
        } while (recv(sock, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1);
        if (fd >= 0) close(fd);
        done += g->total;
        pthread_mutex_lock(&commits.lock);
        while (commits.ready || !commits.free) pthread_cond_wait(&commits.changed, &commits.lock);
        commits.ready = g; g = commits.free; commits.free = NULL;
        pthread_cond_broadcast(&commits.changed);
        pthread_mutex_unlock(&commits.lock);
    }
    pthread_mutex_lock(&commits.lock);  /* the last group committed and acknowledged */
    while (commits.ready || !commits.free) pthread_cond_wait(&commits.changed, &commits.lock);
    pthread_mutex_unlock(&commits.lock);
    return 0;
}

static int consume(const char *queue_dir, const char *claimed_dir, const char *processed_dir,
                   long count, long limit) {
    int queue = opendirfd(queue_dir), claimed = opendirfd(claimed_dir), processed = opendirfd(processed_dir);
    char (*names)[NAME_MAX_] = malloc(limit * NAME_MAX_); char data[65536];
    ino_t *read_files = malloc(limit * sizeof *read_files);
    struct timespec lease[2];
    for (long done = 0; done < count;) {
        long n = list(queue, names, limit);
        if (!n) { usleep(200); continue; }
        clock_gettime(CLOCK_REALTIME, &lease[0]); lease[0].tv_sec += 60; lease[1] = lease[0];
        for (long i = 0; i < n; i++) {
            if (utimensat(queue, names[i], lease, AT_SYMLINK_NOFOLLOW)) die("utimensat");
            if (renameat(queue, names[i], claimed, names[i])) die("renameat claimed");
        }
        long files = 0;
        for (long i = 0; i < n; i++) {
            struct stat st;  /* which file the name is: one shared with others is read once a claim */
            if (fstatat(claimed, names[i], &st, AT_SYMLINK_NOFOLLOW)) die("fstatat");
            int known = 0;
            for (long j = files; j-- > 0 && !known;) known = read_files[j] == st.st_ino;
            if (!known) {
                int fd = openat(claimed, names[i], O_RDONLY | O_CLOEXEC); if (fd < 0) die("openat");
                if (read(fd, data, sizeof data) < 0) die("read");
                close(fd);
                if (files < limit) read_files[files++] = st.st_ino;
            }
            if (renameat(claimed, names[i], processed, names[i])) die("renameat processed");
        }
        done += n;
    }
    printf("%.9f\n", now());
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 9 && !strcmp(argv[1], "produce"))
        return produce(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]), atoi(argv[7]), atol(argv[8]));
    if (argc == 11 && !strcmp(argv[1], "forward"))
        return forward(argv[2], argv[3], argv[4], atoi(argv[5]), atol(argv[6]), atol(argv[7]), atoi(argv[8]),
                       atol(argv[9]), atof(argv[10]));
    if (argc == 7 && !strcmp(argv[1], "receive"))
        return receive(atoi(argv[2]), argv[3], argv[4], atol(argv[5]), atol(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "consume"))
        return consume(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]));
    fprintf(stderr, "usage: floor produce|forward|receive|consume ...\n");
    return 2;
}
"""

PIPELINE_FLOOR = (
    PIPELINE_FLOOR.replace("@FREE_FILES@", str(FREE_FILES))
    .replace("@REUSE_BYTES@", str(REUSE_BYTES))
    .replace("@RECOUNT@", repr(RECOUNT_SECONDS))
)

FRESH = f"{fresh_seconds():g}"
"""The forwarder's last argument: files put this many seconds ago or less are unlinked."""

PRODUCER = textwrap.dedent(
    """
    import os, sys, time
    import dropr
    spool, peer, count, size, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    per_put = int(sys.argv[6])
    payload, fastput, fastput_many = os.urandom(size), dropr.fastput, dropr.fastput_many
    dropr.Client(spool).close()
    print(f"{time.monotonic():.9f}", flush=True)
    if per_put == 1:
        for _ in range(count):
            fastput(payload, peer, spool=spool, sync=sync)
    else:
        payloads = [payload] * per_put
        for _ in range(count // per_put):
            fastput_many(payloads, peer, spool=spool, sync=sync)
    """
)

"""Run with ``python -c PRODUCER SPOOL PEER COUNT SIZE SYNC(0|1) PER_PUT``: prints the time
of its first put, then puts COUNT messages, PER_PUT at a time (``fastput_many`` above 1)."""


def fresh(root: str) -> str:
    """A new work directory under ``root``, after a ``sync`` (each cell starts clean)."""
    subprocess.run(["sync"], check=True)
    return tempfile.mkdtemp(prefix="cell-", dir=root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_text(path: str) -> str:
    with open(path) as file:
        return file.read()


def floor_dirs(cell: str) -> dict[str, str]:
    """The floor's directories in ``cell``, made: spool ``tmp``, ``queue``, ``sent``, ``free``,
    the store's ``stage``, ``store``, ``claimed`` and ``done``."""
    names = ("tmp", "queue", "sent", "free", "stage", "store", "claimed", "done")
    dirs = {name: os.path.join(cell, name) for name in names}
    for path in dirs.values():
        os.mkdir(path)
    return dirs


@contextlib.contextmanager
def floor_stages(binary: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """A function starting a stage of the floor ``binary`` (its stdout a pipe); on the way out
    each stage is waited for, or killed first if the cell failed (a stage left alone would
    wait for a peer that is gone)."""
    started: list[subprocess.Popen[str]] = []

    def run(*argv: str) -> subprocess.Popen[str]:
        started.append(subprocess.Popen([binary, *argv], stdout=subprocess.PIPE, text=True))
        return started[-1]

    try:
        yield run
    except BaseException:
        for proc in started:
            proc.kill()
        raise
    finally:
        for proc in started:
            proc.communicate()


@contextlib.contextmanager
def relay_running(cell: str, spool: str, relay_args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dropr-relay`` on ``spool`` that has started relaying (its log in ``cell``),
    terminated on exit."""
    log_path = os.path.join(cell, "relay.log")
    with open(log_path, "w+") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise", *relay_args],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            while "relaying" not in read_text(log_path):
                if relay.poll() is not None:
                    raise RuntimeError(read_text(log_path))
                time.sleep(0.01)
            yield relay
        finally:
            relay.terminate()
            relay.wait(60)

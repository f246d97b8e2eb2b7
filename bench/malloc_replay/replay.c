/* Replay a malloc log written by mlog.c through this process's glibc and print the peak growth of
 * (arena + mmapped bytes) after the start mark, i.e. what the heap would hold for that call sequence.
 * Records of op 5 are tensors logged by the tracer (trace_drive.py): size > 0 allocates, < 0 frees.
 * Usage: replay LOG [SEED]
 * With SEED > 0 the replay is one draw of the heap's chaos: about once per 200000 records of the
 * measured region it leaks a 4-64 KiB block, which moves later blocks the way a different address
 * layout does (one 4 KiB buffer can move a row's peak by 90 MiB; identical replays repeat exactly). */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { uint8_t op; uint8_t tid; uint16_t pad; uint32_t pad2; uint64_t ptr; uint64_t size; uint64_t aux; } rec_t;
#define HN (1 << 24)
static uint64_t hk[HN]; /* open addressing: logged pointer -> replayed pointer (1 = tombstone) */
static void *hv[HN];
static uint64_t h(uint64_t k) { k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; return k & (HN - 1); }
static void put(uint64_t k, void *v) { uint64_t i = h(k); while (hk[i] > 1 && hk[i] != k) i = (i + 1) & (HN - 1); hk[i] = k; hv[i] = v; }
static void *take(uint64_t k) {
  for (uint64_t i = h(k); hk[i]; i = (i + 1) & (HN - 1))
    if (hk[i] == k) { hk[i] = 1; return hv[i]; }
  return 0;
}
static void *volatile sink; /* keeps the perturbing blocks (an unused malloc is optimised away) */
int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: replay LOG [SEED]\n"); return 2; }
  int seed = argc > 2 ? atoi(argv[2]) : 0;
  srand(seed);
  FILE *f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 2; }
  fseek(f, 0, SEEK_END); long n = ftell(f) / (long)sizeof(rec_t); fseek(f, 0, SEEK_SET);
  rec_t *r = malloc(n * sizeof(rec_t));
  if (fread(r, sizeof(rec_t), n, f) != (size_t)n) { fprintf(stderr, "short read\n"); return 2; }
  fclose(f);
  int started = 0; size_t base = 0, peak = 0;
  for (long i = 0; i < n; i++) {
    rec_t *e = &r[i];
    if (seed && started && rand() % 200000 == 0) sink = malloc(4096 + rand() % 60000);
    if (e->op == 9) { /* marks; 1 = start of the measured region */
      if (e->aux == 1) { struct mallinfo2 m = mallinfo2(); base = peak = m.arena + m.hblkhd; started = 1; }
      continue;
    }
    if (e->op == 5) { /* a traced tensor: positive size = allocate, negative = free */
      uint64_t k = e->ptr | (1ULL << 63);
      if ((int64_t)e->size > 0) { void *p = 0; if (!posix_memalign(&p, 64, e->size)) put(k, p);
        if (started) { struct mallinfo2 m = mallinfo2(); if (m.arena + m.hblkhd > peak) peak = m.arena + m.hblkhd; } }
      else { void *p = take(k); if (p) free(p); }
      continue;
    }
    if (e->op == 2) { void *p = take(e->ptr); if (p) free(p); continue; }
    void *p = 0;
    if (e->op == 1) p = malloc(e->size);
    else if (posix_memalign(&p, e->aux, e->size)) p = 0;
    if (!p) continue;
    put(e->ptr, p);
    if (started) { struct mallinfo2 m = mallinfo2(); if (m.arena + m.hblkhd > peak) peak = m.arena + m.hblkhd; }
  }
  printf("%ld calls replayed, peak growth %.0f MiB\n", n, (peak - base) / 1048576.0);
  return 0;
}

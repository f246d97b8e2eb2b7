/* malloc logger for bench/malloc_replay: LD_PRELOAD it with MLOG_FILE=path; records every
 * malloc/calloc/realloc/free/posix_memalign (op 1/2/3), mlog_mark(v) calls (op 9) and
 * mlog_tensor(key, signed bytes) calls (op 5, fake tensors from the tracer) as 32-byte records. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <pthread.h>
typedef struct { uint8_t op; uint8_t tid; uint16_t pad; uint32_t pad2; uint64_t ptr; uint64_t size; uint64_t aux; } rec_t;
static void *(*r_malloc)(size_t); static void (*r_free)(void*); static void *(*r_calloc)(size_t,size_t);
static void *(*r_realloc)(void*,size_t); static int (*r_pm)(void**,size_t,size_t); static void *(*r_memalign)(size_t,size_t);
static void *(*r_aligned_alloc)(size_t,size_t);
static int fd=-1; static rec_t buf[65536]; static int n=0; static pthread_mutex_t mu=PTHREAD_MUTEX_INITIALIZER;
static __thread int guard=0; static int on=0;
static char boot[1<<16]; static size_t bootn=0;
static void init(void){ if(r_malloc) return; guard=1;
 r_malloc=dlsym(RTLD_NEXT,"malloc"); r_free=dlsym(RTLD_NEXT,"free"); r_calloc=dlsym(RTLD_NEXT,"calloc");
 r_realloc=dlsym(RTLD_NEXT,"realloc"); r_pm=dlsym(RTLD_NEXT,"posix_memalign"); r_memalign=dlsym(RTLD_NEXT,"memalign");
 r_aligned_alloc=dlsym(RTLD_NEXT,"aligned_alloc");
 const char*p=getenv("MLOG_FILE"); if(p){fd=open(p,O_WRONLY|O_CREAT|O_TRUNC,0644); on=1;} guard=0; }
static void flush(void){ if(n&&fd>=0){ ssize_t w=write(fd,buf,n*sizeof(rec_t)); (void)w; } n=0; }
static pthread_t mainth; static int mainset=0;
static void logit(int op, void*ptr, size_t size, uint64_t aux){ if(!on||guard) return; guard=1;
 pthread_mutex_lock(&mu); if(!mainset){mainth=pthread_self();mainset=1;}
 rec_t*r=&buf[n++]; r->op=op; r->tid=pthread_equal(pthread_self(),mainth)?0:1; r->ptr=(uint64_t)ptr; r->size=size; r->aux=aux;
 if(n==65536) flush(); pthread_mutex_unlock(&mu); guard=0; }
__attribute__((destructor)) static void fin(void){ pthread_mutex_lock(&mu); flush(); pthread_mutex_unlock(&mu); }
void mlog_flush(void){ pthread_mutex_lock(&mu); flush(); pthread_mutex_unlock(&mu); }
void mlog_mark(uint64_t v){ logit(9,0,0,v); }
int is_boot(void*p){ return (char*)p>=boot && (char*)p<boot+sizeof(boot); }
void*malloc(size_t s){ if(!r_malloc){ if(guard){ void*p=boot+bootn; bootn+=(s+15)&~15; return p;} init(); } void*p=r_malloc(s); logit(1,p,s,0); return p; }
void*calloc(size_t a,size_t b){ if(!r_calloc){ if(guard){ void*p=boot+bootn; bootn+=(a*b+15)&~15; memset(p,0,a*b); return p;} init(); } void*p=r_calloc(a,b); logit(1,p,a*b,0); return p; }
void free(void*p){ if(!p||is_boot(p)) return; if(!r_free) init(); logit(2,p,0,0); r_free(p); }
void*realloc(void*q,size_t s){ if(!r_realloc) init(); if(is_boot(q)){ void*p=r_malloc(s); memcpy(p,q,s); logit(1,p,s,0); return p;} void*p=r_realloc(q,s); if(q) logit(2,q,0,0); if(p) logit(1,p,s,0); return p; }
int posix_memalign(void**o,size_t al,size_t s){ if(!r_pm) init(); int rc=r_pm(o,al,s); if(!rc) logit(3,*o,s,al); return rc; }
void*memalign(size_t al,size_t s){ if(!r_memalign) init(); void*p=r_memalign(al,s); logit(3,p,s,al); return p; }
void*aligned_alloc(size_t al,size_t s){ if(!r_aligned_alloc) init(); void*p=r_aligned_alloc(al,s); logit(3,p,s,al); return p; }
void mlog_tensor(uint64_t key, int64_t nbytes){ logit(5,(void*)key,(size_t)nbytes,0); }

/* fp32 FMA peak of this CPU: 12 independent AVX-512 FMA chains per thread (2 FLOP per lane).
   gcc -O2 -mavx512f -fopenmp benchmarks/peak_fma.c -o /tmp/peak_fma && OMP_NUM_THREADS=2 /tmp/peak_fma
   Measured 460 GFLOP/s on the 2-core AMD EPYC VM (family 26 model 2: Zen 5, full-width AVX-512). */
#include <immintrin.h>
#include <stdio.h>
#include <omp.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  long iters=200000000/ 8;
  double best=0;
  for(int rep=0;rep<3;rep++){
  double t0=now();
  float sink=0;
  #pragma omp parallel reduction(+:sink)
  {
    __m512 a[12]; __m512 b=_mm512_set1_ps(1.0000001f), c=_mm512_set1_ps(1e-7f);
    for(int i=0;i<12;i++) a[i]=_mm512_set1_ps(i);
    for(long it=0;it<iters;it++){
      #pragma GCC unroll 12
      for(int i=0;i<12;i++) a[i]=_mm512_fmadd_ps(a[i],b,c);
    }
    __m512 s=a[0]; for(int i=1;i<12;i++) s=_mm512_add_ps(s,a[i]);
    sink+=_mm512_reduce_add_ps(s);
  }
  double t=now()-t0;
  double gf=(double)omp_get_max_threads()*iters*12*16*2/t/1e9;
  if(gf>best)best=gf;
  printf("threads %d: %.1f GFLOP/s (%f)\n",omp_get_max_threads(),gf,sink);
  }
  printf("best %.1f\n",best);
}

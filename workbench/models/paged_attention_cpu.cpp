// Decode attention straight over the paged KV pool, for fp32 on CPU.
//
// Why a kernel: the SDPA path first gathers every decode sequence's blocks into a buffer
// padded to the longest context, then attends over the buffer. At long contexts that moves the
// K/V bytes three times (pool -> buffer -> SDPA) and pads short sequences to the longest; on
// the default benchmark workload 40% of the gathered slots were padding and the decode gathers
// plus SDPA took ~30% of a pass. Here each (sequence, KV head) reads its own tokens' K and V
// once, in block-table order, with an online softmax (running max and sum, as flash attention),
// so nothing is gathered and nothing is padded.
//
// Layout: q [B, H, D]; k_pool, v_pool [num_blocks, block_size, KVH, D] (contiguous);
// block_tables [B, W] int64; context_lens [B] int64 (tokens in cache, the query being the
// last); first_pos [B] int64 (first attended position: 0, or the sliding window's start).
// Query head h reads KV head h / (H / KVH) (grouped-query attention). Work items are
// (sequence, KV head) pairs, split over torch's intra-op threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_pool, torch::Tensor v_pool,
                                     torch::Tensor block_tables, torch::Tensor context_lens,
                                     torch::Tensor first_pos, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_pool.dtype() == torch::kFloat32 &&
                  v_pool.dtype() == torch::kFloat32,
              "paged_decode_attention: float32 only");
  TORCH_CHECK(q.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  block_tables.is_contiguous() && context_lens.is_contiguous() &&
                  first_pos.is_contiguous(),
              "paged_decode_attention: contiguous tensors only");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t BS = k_pool.size(1), KVH = k_pool.size(2), W = block_tables.size(1);
  TORCH_CHECK(k_pool.size(3) == D && H % KVH == 0, "paged_decode_attention: shapes");
  const int64_t G = H / KVH;
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_pool.data_ptr<float>();
  const float* vp = v_pool.data_ptr<float>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* ctx = context_lens.data_ptr<int64_t>();
  const int64_t* first = first_pos.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);

  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(G * D), m(G), l(G), sc(G * BS);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / KVH, kvh = item % KVH;
      const float* qb = qp + (b * H + kvh * G) * D;  // this KV head's G query heads
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t n = ctx[b], lo = first[b];
      for (int64_t blk = lo / BS; blk * BS < n; ++blk) {
        TORCH_CHECK(blk < W, "paged_decode_attention: block table too short");
        const int64_t block = tables[b * W + blk];
        const int64_t t0 = std::max(blk * BS, lo), t1 = std::min(blk * BS + BS, n);
        const float* kb = kp + (block * BS * KVH + kvh) * D;
        const float* vb = vp + (block * BS * KVH + kvh) * D;
        // Per query head: the block's scores, one rescale of the running sums, then the
        // block's probabilities (-fno-math-errno leaves the compiler free to vectorize exp;
        // whether it does was not measured separately).
        for (int64_t g = 0; g < G; ++g) {
          float* scores = sc.data() + g * BS;
          const int64_t len = t1 - t0;
          for (int64_t j = 0; j < len; ++j) {
            const float* kt = kb + (t0 - blk * BS + j) * KVH * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += qb[g * D + d] * kt[d];
            scores[j] = dot * s;
          }
          float mx = m[g];
          for (int64_t j = 0; j < len; ++j) mx = std::max(mx, scores[j]);
          float block_sum = 0.f;
#pragma omp simd reduction(+ : block_sum)
          for (int64_t j = 0; j < len; ++j) {
            scores[j] = std::exp(scores[j] - mx);
            block_sum += scores[j];
          }
          const float correction = std::exp(m[g] - mx);  // 0 on the first block (m = -inf)
          float* a = acc.data() + g * D;
          l[g] = l[g] * correction + block_sum;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] *= correction;
          for (int64_t j = 0; j < len; ++j) {
            const float p = scores[j];
            const float* vt = vb + (t0 - blk * BS + j) * KVH * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) a[d] += p * vt[d];
          }
          m[g] = mx;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* o = op + (b * H + kvh * G + g) * D;
        const float inv = 1.f / l[g];
        for (int64_t d = 0; d < D; ++d) o[d] = acc[g * D + d] * inv;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "Decode attention over the paged KV pool (fp32, CPU)");
}

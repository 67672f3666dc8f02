// LUT palettization: one weighted 1-D k-means per table (a group of output
// channels), k-means++ initialisation from a seeded generator.
//
// 1-D k-means needs no per-point work per iteration: with the values sorted
// once (radix sort) and prefix sums of weight and weight * value, each cluster
// is a contiguous run between the midpoints of neighbouring centroids, found by
// binary search, so an iteration costs O(k log n). Lloyd's iterations run to convergence or
// max_iterations. The initialisation works on at most kSeedPoints weighted
// quantiles so its O(n k) cost stays bounded for large tables. Tables are
// independent and computed in parallel; a single table (per-tensor LUT) spreads
// its O(n) parts (gathering, sorting, assigning codes) over the threads in
// fixed slices instead. Either way results do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include "quant/quant.h"
#include "quant/weight_rows.h"
#include "runtime/half.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

constexpr int64_t kSeedPoints = 1 << 16;
constexpr int64_t kSortSlices = 16;  // fixed, so the sort's result does not depend on the threads

// splitmix64: a small, well-mixed, portable generator (same draws everywhere).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }  // [0, 1)
};

struct WeightedValues {
  std::vector<float> value;    // sorted, distinct
  std::vector<double> weight;  // total weight of each value
};

struct Point {
  uint32_t key;  // the value's bits, mapped so that unsigned order is numeric order
  float weight;
};

uint32_t sort_key(float v) {
  const uint32_t bits = float_bits(v);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

float key_value(uint32_t key) { return bits_float(key & 0x80000000u ? key & 0x7FFFFFFFu : ~key); }

// LSD radix sort on the 32-bit keys, 11 bits per pass: O(n), several times
// faster than a comparison sort on the millions of points of a large table.
// Each pass counts and scatters kSortSlices slices of the points in parallel;
// writing slice after slice within each bucket keeps the pass stable.
void radix_sort(std::vector<Point>& points) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const int64_t n = static_cast<int64_t>(points.size());
  const int64_t slices = n >= (int64_t(1) << 16) ? kSortSlices : 1;
  const int64_t slice = (n + slices - 1) / slices;
  std::vector<Point> scratch(points.size());
  std::vector<int64_t> offset(static_cast<size_t>(slices * kBuckets));
  for (int shift = 0; shift < 32; shift += kBits) {
    auto bucket = [&](const Point& p) { return (p.key >> shift) & (kBuckets - 1); };
    parallel_for(slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        int64_t* count = offset.data() + s * kBuckets;
        std::fill(count, count + kBuckets, 0);
        for (int64_t i = s * slice; i < std::min(n, (s + 1) * slice); ++i) ++count[bucket(points[i])];
      }
    });
    int64_t total = 0;
    for (int b = 0; b < kBuckets; ++b) {
      for (int64_t s = 0; s < slices; ++s) {
        const int64_t count = offset[s * kBuckets + b];
        offset[s * kBuckets + b] = total;
        total += count;
      }
    }
    parallel_for(slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        int64_t* next = offset.data() + s * kBuckets;
        for (int64_t i = s * slice; i < std::min(n, (s + 1) * slice); ++i) scratch[next[bucket(points[i])]++] = points[i];
      }
    });
    points.swap(scratch);
  }
}

// Distinct values in ascending order with their total weight (-0 and +0 merge).
WeightedValues collect(std::vector<Point>& points) {
  radix_sort(points);
  WeightedValues out;
  for (const Point& p : points) {
    const float v = key_value(p.key);
    if (!out.value.empty() && out.value.back() == v) {
      out.weight.back() += p.weight;
    } else {
      out.value.push_back(v);
      out.weight.push_back(p.weight);
    }
  }
  return out;
}

// At most kSeedPoints representatives: the weighted quantiles of the data.
WeightedValues seed_candidates(const WeightedValues& data, double total) {
  if (static_cast<int64_t>(data.value.size()) <= kSeedPoints) return data;
  WeightedValues out;
  const double step = total / kSeedPoints;
  double cumulative = 0.0, next_edge = step;
  double bucket_weight = 0.0, bucket_sum = 0.0;
  for (size_t i = 0; i < data.value.size(); ++i) {
    cumulative += data.weight[i];
    bucket_weight += data.weight[i];
    bucket_sum += data.weight[i] * data.value[i];
    if (cumulative >= next_edge || i + 1 == data.value.size()) {
      if (bucket_weight > 0.0) {
        out.value.push_back(static_cast<float>(bucket_sum / bucket_weight));
        out.weight.push_back(bucket_weight);
      }
      bucket_weight = bucket_sum = 0.0;
      while (next_edge <= cumulative) next_edge += step;
    }
  }
  return out;
}

std::vector<double> kmeans_plus_plus(const WeightedValues& candidates, int k, SplitMix64& rng) {
  const size_t n = candidates.value.size();
  std::vector<double> distance(n, INFINITY);
  std::vector<double> centroids;
  auto pick = [&](const std::vector<double>& mass) {
    const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
    double target = rng.uniform() * total;
    for (size_t i = 0; i < n; ++i) {
      target -= mass[i];
      if (target < 0.0) return i;
    }
    return n - 1;
  };
  std::vector<double> mass(candidates.weight);
  while (static_cast<int>(centroids.size()) < k) {
    const size_t chosen = pick(mass);
    const double c = candidates.value[chosen];
    centroids.push_back(c);
    for (size_t i = 0; i < n; ++i) {
      const double d = candidates.value[i] - c;
      distance[i] = std::min(distance[i], d * d);
      mass[i] = candidates.weight[i] * distance[i];
    }
    if (std::accumulate(mass.begin(), mass.end(), 0.0) == 0.0) break;  // every candidate is a centroid
  }
  std::sort(centroids.begin(), centroids.end());
  return centroids;
}

std::vector<double> lloyd(const WeightedValues& data, std::vector<double> centroids, int max_iterations) {
  const size_t n = data.value.size();
  std::vector<double> prefix_weight(n + 1, 0.0), prefix_sum(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) {
    prefix_weight[i + 1] = prefix_weight[i] + data.weight[i];
    prefix_sum[i + 1] = prefix_sum[i] + data.weight[i] * data.value[i];
  }
  const size_t k = centroids.size();
  for (int iteration = 0; iteration < max_iterations; ++iteration) {
    std::vector<double> next(centroids);
    size_t begin = 0;
    for (size_t c = 0; c < k; ++c) {
      size_t end = n;
      if (c + 1 < k) {
        const double edge = 0.5 * (centroids[c] + centroids[c + 1]);
        end = std::upper_bound(data.value.begin(), data.value.end(), edge) - data.value.begin();
        end = std::max(end, begin);
      }
      const double mass = prefix_weight[end] - prefix_weight[begin];
      if (mass > 0.0) next[c] = (prefix_sum[end] - prefix_sum[begin]) / mass;
      begin = end;
    }
    std::sort(next.begin(), next.end());
    if (next == centroids) break;
    centroids.swap(next);
  }
  return centroids;
}

void store_entry(const TensorView& lut, int64_t index, float value) {
  switch (lut.dtype) {
    case DType::f16: lut.ptr<uint16_t>()[index] = fp32_to_fp16(value); break;
    case DType::bf16: lut.ptr<uint16_t>()[index] = fp32_to_bf16(value); break;
    default: lut.ptr<float>()[index] = value; break;
  }
}

// Index of the entry of the sorted `table` nearest to v (the lower on a tie).
uint8_t nearest(const float* table, int entries, float v) {
  int upper = 0;  // entries below v: a branchless count for small tables, a binary search for large ones
  if (entries <= 16) {
    for (int e = 0; e < entries; ++e) upper += table[e] < v;
  } else {
    upper = static_cast<int>(std::lower_bound(table, table + entries, v) - table);
  }
  if (upper == 0) return 0;
  if (upper == entries) return static_cast<uint8_t>(entries - 1);
  return static_cast<uint8_t>(v - table[upper - 1] <= table[upper] - v ? upper - 1 : upper);
}

}  // namespace

void quantize_lut(const TensorView& weight, const LutOptions& options, const TensorView& importance,
                  const TensorView& packed, const TensorView& lut) {
  require_dtype(weight, "weight", {DType::f32, DType::f16, DType::bf16});
  require_ndim(weight, "weight", 2, 2);
  require_contiguous(weight, "weight");
  check_lut_bits(options.bits);
  const int64_t rows = weight.shape[0], cols = weight.shape[1];
  if (cols == 0 || rows == 0) fail_argument(ErrorKind::InvalidArgument, "weight", "a non-empty matrix", "shape " + weight.shape_string());
  if (options.max_iterations < 1)
    fail_argument(ErrorKind::InvalidArgument, "max_iterations", "at least 1", std::to_string(options.max_iterations));
  QuantizedViews out;
  out.kind = QuantKind::lut;
  out.bits = options.bits;
  out.cols = cols;
  out.group_size = options.group_size;
  out.packed = packed;
  out.lut = lut;
  const PackedWeights w = make_packed_weights(out, nullptr);  // checks shapes
  require_writable(packed, "packed");
  require_writable(lut, "lut");
  const float* channel_weight = checked_importance(importance, cols);
  const int entries = 1 << options.bits;
  const int64_t group = options.group_size, tables = rows / group;
  // Rows [t * group, (t + 1) * group) of table t, in parallel when there is one table
  // (nested calls from the per-table loop below run inline).
  auto for_rows = [&](int64_t t, const std::function<void(int64_t row, float* values)>& fn) {
    parallel_for(group, std::max<int64_t>(1, (int64_t(1) << 16) / cols), [&](int64_t begin, int64_t end) {
      std::vector<float> values(static_cast<size_t>(cols));
      for (int64_t r = t * group + begin; r < t * group + end; ++r) {
        load_weight_row(weight, r, values.data());
        fn(r, values.data());
      }
    });
  };
  parallel_for(tables, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::vector<Point> points(static_cast<size_t>(group * cols));
      for_rows(t, [&](int64_t r, float* values) {
        Point* out = points.data() + (r - t * group) * cols;
        for (int64_t k = 0; k < cols; ++k) out[k] = {sort_key(values[k]), channel_weight ? channel_weight[k] : 1.0f};
      });
      WeightedValues data = collect(points);
      std::vector<Point>().swap(points);
      double total = std::accumulate(data.weight.begin(), data.weight.end(), 0.0);
      if (total == 0.0) {  // every weight ignored: fall back to an unweighted fit
        std::fill(data.weight.begin(), data.weight.end(), 1.0);
        total = static_cast<double>(data.weight.size());
      }
      std::vector<double> centroids;
      if (static_cast<int>(data.value.size()) <= entries) {
        centroids.assign(data.value.begin(), data.value.end());
      } else {
        SplitMix64 rng{options.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(t)};
        centroids = lloyd(data, kmeans_plus_plus(seed_candidates(data, total), entries, rng), options.max_iterations);
      }
      // Unused entries repeat the largest centroid so the table stays sorted.
      float table[256];
      for (int e = 0; e < entries; ++e) {
        const double c = centroids[std::min<size_t>(e, centroids.size() - 1)];
        table[e] = round_to_dtype(static_cast<float>(c), lut.dtype);
        if (std::isinf(table[e]))
          fail_argument(ErrorKind::InvalidArgument, "lut_dtype", "a dtype whose range holds the table",
                        std::string(dtype_name(lut.dtype)) + " overflowing for the centroid " + std::to_string(c) +
                            " (use fp32 tables)");
        store_entry(lut, t * entries + e, static_cast<float>(c));
      }
      for_rows(t, [&](int64_t r, float* values) {
        uint8_t* codes = reinterpret_cast<uint8_t*>(values);  // each code overwrites a value already read
        for (int64_t k = 0; k < cols; ++k) codes[k] = nearest(table, entries, values[k]);
        pack_row(codes, cols, options.bits, packed.ptr<uint8_t>() + r * w.row_bytes);
      });
    }
  });
}

}  // namespace pocketml

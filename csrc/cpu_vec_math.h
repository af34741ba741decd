// Vectorised exp, log1p and silu (scalar libm calls would cost as much as the scan).
// exp: x = n ln2 + r with |r| <= ln2/2, Taylor series of exp(r) to below half an ulp
// (degree 7 in float, 13 in double), times 2^n built in the exponent bits.
// log1p (double, y >= 0): u = 1 + y = 2^k m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172 (series to s^23), plus the rounding
// error of 1 + y, (y - (u - 1)) / u.
#pragma once

#include <cstdint>

#include "cpu_rank1_scan.h"

namespace mmhnet {
namespace cpu {

template <typename T>
struct ExpConsts;

template <>
struct ExpConsts<float> {
    using Int = int32_t;
    static constexpr float lo = -87.0f, hi = 88.0f;  // keeps 2^n a normal number
    static constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23
    static constexpr int degree = 7, mantissa_bits = 23, bias = 127;
};

template <>
struct ExpConsts<double> {
    using Int = int64_t;
    static constexpr double lo = -708.0, hi = 709.0;
    static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr int degree = 13, mantissa_bits = 52, bias = 1023;
};

template <typename T>
inline Vec<T> vexp(Vec<T> x) {
    using K = ExpConsts<T>;
    using Int = typename K::Int;
    typedef Int IVec __attribute__((vector_size(kVecBytes)));
    constexpr T log2e = T(1.4426950408889634);
    constexpr T ln2_hi = T(0.693145751953125);  // few mantissa bits: n * ln2_hi is exact
    constexpr T ln2_lo = T(1.4286068203094172321e-6);
    x = x < K::lo ? Vec<T>{} + K::lo : x;
    x = x > K::hi ? Vec<T>{} + K::hi : x;
    const Vec<T> n = (x * log2e + K::round_magic) - K::round_magic;
    const Vec<T> r = (x - n * ln2_hi) - n * ln2_lo;
    Vec<T> p = Vec<T>{} + T(1);
    for (int k = K::degree; k >= 1; --k) p = p * r * (T(1) / T(k)) + T(1);
    const IVec bits = (__builtin_convertvector(n, IVec) + K::bias) << K::mantissa_bits;
    Vec<T> scale;
    static_assert(sizeof(scale) == sizeof(bits), "lane widths differ");
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

inline Vec<double> vlog1p(Vec<double> y) {
    typedef int64_t IVec __attribute__((vector_size(kVecBytes)));
    const Vec<double> u = 1.0 + y;
    const Vec<double> rounding = (y - (u - 1.0)) / u;
    IVec bits;
    __builtin_memcpy(&bits, &u, sizeof bits);
    IVec k = ((bits >> 52) & 0x7ff) - 1023;
    const IVec mantissa = (bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL;
    Vec<double> m;
    __builtin_memcpy(&m, &mantissa, sizeof m);
    const IVec big = m > 1.4142135623730951;  // -1 where true
    m = big ? m * 0.5 : m;
    k -= big;
    const Vec<double> s = (m - 1.0) / (m + 1.0), s2 = s * s;
    Vec<double> series = Vec<double>{} + 1.0 / 23.0;
    for (int j = 21; j >= 1; j -= 2) series = series * s2 + 1.0 / j;
    const Vec<double> kd = __builtin_convertvector(k, Vec<double>);
    return kd * 0.6931471805599453 + 2.0 * s * series + rounding;
}

// out[i] = silu(z[i]) and, if dsilu is not null, dsilu[i] = silu'(z[i]); count % kLanes == 0.
// In-place (out == z) is allowed.
template <typename T>
inline void silu_row(const T* z, T* out, T* dsilu, int64_t count) {
    for (int64_t i = 0; i < count; i += kLanes<T>) {
        const Vec<T> zv = vload(z + i);
        const Vec<T> s = T(1) / (T(1) + vexp<T>(-zv));
        if (dsilu) vstore(dsilu + i, s * (T(1) + zv * (T(1) - s)));
        vstore(out + i, zv * s);
    }
}

// sum_i a[i] b[i] over padded rows (count % kLanes == 0), in a fixed order.
template <typename T>
inline double vdot(const T* a, const T* b, int64_t count) {
    Vec<T> acc = {};
    for (int64_t i = 0; i < count; i += kLanes<T>) acc += vload(a + i) * vload(b + i);
    double s = 0.0;
    for (int l = 0; l < kLanes<T>; ++l) s += double(acc[l]);
    return s;
}

}  // namespace cpu
}  // namespace mmhnet

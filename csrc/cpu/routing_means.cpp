// mean(mask) and mean(p) for the ratio loss, on CPU: fixed blocks summed in a fixed order, so the
// result does not depend on the thread count.
#include <algorithm>
#include <vector>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"

namespace mmhnet {
namespace routing {
namespace {

constexpr int64_t kBlock = 4096;

template <class C>
void means(const uint8_t* mask, const C* p, int64_t total, C* out) {
    const int64_t blocks = (total + kBlock - 1) / kBlock;
    std::vector<C> mask_part(blocks), p_part(blocks);
#pragma omp parallel for schedule(static) if (total >= kMinParallelWork)
    for (int64_t b = 0; b < blocks; ++b) {
        C m = 0, s = 0;
        for (int64_t t = b * kBlock; t < std::min(total, (b + 1) * kBlock); ++t) {
            m += mask[t] != 0;
            s += p[t];
        }
        mask_part[b] = m;
        p_part[b] = s;
    }
    C m = 0, s = 0;
    for (int64_t b = 0; b < blocks; ++b) {
        m += mask_part[b];
        s += p_part[b];
    }
    out[0] = m / static_cast<C>(total);
    out[1] = s / static_cast<C>(total);
}

}  // namespace

void mask_p_means(uintptr_t mask, uintptr_t p, int64_t total, int dtype, uintptr_t out) {
    dispatch(dtype, "routing_mask_p_means", [&](auto tag) {
        using C = compute_t<decltype(tag)>;
        means<C>(ptr<const uint8_t>(mask), ptr<const C>(p), total, ptr<C>(out));
    });
}

}  // namespace routing
}  // namespace mmhnet

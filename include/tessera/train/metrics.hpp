#pragma once
// Running means of loss and accuracy over an epoch, weighted by batch size.
#include <cstdint>

namespace tessera::train {

struct Meter {
    double loss_sum = 0;
    std::int64_t top1 = 0, top5 = 0, count = 0;

    void add(double mean_loss, std::int64_t hits1, std::int64_t hits5, std::int64_t n) {
        loss_sum += mean_loss * double(n);
        top1 += hits1;
        top5 += hits5;
        count += n;
    }
    void add(const Meter& m) {
        loss_sum += m.loss_sum;
        top1 += m.top1;
        top5 += m.top5;
        count += m.count;
    }
    double loss() const { return count ? loss_sum / double(count) : 0; }
    double top1_rate() const { return count ? double(top1) / double(count) : 0; }
    double top5_rate() const { return count ? double(top5) / double(count) : 0; }
};

}  // namespace tessera::train

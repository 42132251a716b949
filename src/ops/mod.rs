//! Building blocks for operating the broker that know nothing of it: metric types and the
//! Prometheus text format ([`metrics`]), a minimal HTTP/1.x server on one thread ([`http`]),
//! and systemd's notification protocol ([`systemd`]). The runtime puts them together
//! (`runtime::monitor`).

/// A one-thread HTTP/1.x server for a handful of GET endpoints.
pub(crate) mod http;
/// Counters and fixed-bucket histograms on atomics, and the Prometheus text format.
pub(crate) mod metrics;
/// `sd_notify`: datagrams to `$NOTIFY_SOCKET`.
pub(crate) mod systemd;

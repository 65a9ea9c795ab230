//! The tunnel's client side and its streams: app connections ride as
//! HTTP/2 `CONNECT` streams over a few pooled mTLS connections to each
//! endpoint's tunnel port (the wire format is [`crate::wire::hbone`]; the
//! listener is [`crate::inbound::tunnel`]).
//!
//! ```text
//!   outbound (TCP) ── pool::TunnelPool (connections per endpoint tunnel port,
//!                        streams capped per connection; connect_gate: one dial at a time)
//!        ══ stream::H2Stream (one CONNECT stream as bytes) ══▶ peer's tunnel listener
//!   pooled_credentials: a pooled connection carries new streams only while
//!   our SVID is unchanged and the server keeps its standing (both pools)
//! ```

pub(crate) mod connect_gate;
pub(crate) mod pool;
pub(crate) mod pooled_credentials;
pub(crate) mod stream;
#[cfg(test)]
pub(crate) mod test_pools;

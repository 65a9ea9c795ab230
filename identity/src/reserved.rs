//! SPIFFE ID paths Signet keeps for itself. No workload may be registered
//! under [`RESERVED_PATH_PREFIX`], so a workload can never impersonate a
//! node agent or the CA.

/// Path prefix reserved for Signet's own identities (the CA server, agents).
pub const RESERVED_PATH_PREFIX: &str = "/signet";
/// Path prefix of agent identities (under the reserved prefix).
pub const AGENT_PATH_PREFIX: &str = "/signet/agent";
/// Path of the CA server's own SVID, which agents expect on the node API.
pub const SERVER_PATH: &str = "/signet/server";
/// Path of the probe SVID the CA signs to test itself at start.
pub const SELF_TEST_PATH: &str = "/signet/ca-self-test";

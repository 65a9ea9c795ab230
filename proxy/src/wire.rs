//! What goes over the wire between proxies, apart from TLS itself: the
//! tunnel's HTTP/2 settings and `CONNECT` exchange ([`hbone`]), and the
//! headers with which one proxy tells another what happened
//! ([`control_headers`]).

pub(crate) mod control_headers;
pub(crate) mod hbone;

//! Which local user opened a TCP connection to one of our listeners.
//!
//! An outbound listener lends this workload's identity to whoever connects
//! to it; on a shared host that must not be any local user. For TCP there
//! is no `SO_PEERCRED`, but the kernel records the owner of every socket:
//! one `NETLINK_SOCK_DIAG` request for the exact 4-tuple of the connecting
//! socket (its local address is our peer address, and the other way round)
//! returns its uid, whatever the addresses (loopback or the pod's own).
//! A connection that is not found there did not come from this network
//! namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};

use rustix::net::netlink::{SocketAddrNetlink, SOCK_DIAG};
use rustix::net::{
    recv, sendto, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_LEN: usize = 56;
/// Offset of `idiag_uid` in `struct inet_diag_msg`.
const UID_OFFSET: usize = 64;
const IPPROTO_TCP: u8 = 6;
const ENOENT: i32 = 2;

/// The request for the socket whose local end is `src` and remote end is
/// `dst` (`struct nlmsghdr` + `struct inet_diag_req_v2`).
fn request(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    let family = match src.ip() {
        IpAddr::V4(_) => family_byte(AddressFamily::INET),
        IpAddr::V6(_) => family_byte(AddressFamily::INET6),
    };
    m.push(family);
    m.push(IPPROTO_TCP);
    m.push(0); // no extensions
    m.push(0); // pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    for ip in [src.ip(), dst.ip()] {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
        }
        m.extend_from_slice(&a);
    }
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

fn family_byte(f: AddressFamily) -> u8 {
    f.as_raw() as u8
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses the kernel's answer: `Ok(Some(uid))`, `Ok(None)` when no such
/// socket exists, `Err` for anything else.
fn parse_reply(b: &[u8]) -> io::Result<Option<u32>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    let kind = b
        .get(4..6)
        .map(|t| u16::from_ne_bytes([t[0], t[1]]))
        .ok_or_else(|| bad("short reply"))?;
    match kind {
        SOCK_DIAG_BY_FAMILY => u32_at(b, NLMSG_HDRLEN + UID_OFFSET)
            .map(Some)
            .ok_or_else(|| bad("short inet_diag_msg")),
        NLMSG_ERROR => {
            let errno = u32_at(b, NLMSG_HDRLEN).ok_or_else(|| bad("short error"))? as i32;
            if -errno == ENOENT {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            }
        }
        other => Err(bad(&format!("unexpected message type {other}"))),
    }
}

/// The uid owning the local socket connected from `peer` to our `local`
/// address, or `None` if no socket of this host's network namespace is.
///
/// Each thread keeps one netlink socket (two system calls fewer per
/// connection than a socket per query); replies are matched to their
/// query by sequence number, and a socket that failed is replaced.
pub(crate) fn peer_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
    use std::cell::{Cell, RefCell};
    thread_local! {
        static SOCKET: RefCell<Option<rustix::fd::OwnedFd>> = const { RefCell::new(None) };
        static SEQ: Cell<u32> = const { Cell::new(0) };
    }
    let seq = SEQ.with(|s| {
        let n = s.get().wrapping_add(1);
        s.set(n);
        n
    });
    SOCKET.with(|cell| {
        let mut slot = cell.borrow_mut();
        let fd = match slot.take() {
            Some(fd) => fd,
            None => socket_with(
                AddressFamily::NETLINK,
                SocketType::DGRAM,
                SocketFlags::CLOEXEC,
                Some(SOCK_DIAG),
            )?,
        };
        let answer = query(&fd, peer, local, seq)?;
        *slot = Some(fd);
        Ok(answer)
    })
}

/// One query on `fd`; replies of earlier queries (left by a failure) are
/// skipped.
fn query(
    fd: &rustix::fd::OwnedFd,
    peer: SocketAddr,
    local: SocketAddr,
    seq: u32,
) -> io::Result<Option<u32>> {
    // The connecting socket: its local end is our peer.
    sendto(
        fd,
        &request(peer, local, seq),
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    // The kernel answers within sendto: the reply is queued already, and
    // a worker thread never blocks here.
    let mut buf = [0u8; 1024];
    for _ in 0..4 {
        let (_, n) = recv(fd, &mut buf[..], RecvFlags::DONTWAIT)?;
        if u32_at(&buf[..n], 8) == Some(seq) {
            return parse_reply(&buf[..n]);
        }
    }
    Err(io::Error::other("sock_diag: no reply to this query"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_owner_of_a_local_connection_is_this_process_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(
            peer_uid(peer, server.local_addr().unwrap()).unwrap(),
            Some(me)
        );
        // No such connection: nobody.
        let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            peer_uid(nowhere, server.local_addr().unwrap()).unwrap(),
            None
        );
        drop(client);
    }

    #[test]
    fn another_users_connection_is_reported_as_theirs() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("!!! SKIPPING: needs root to connect as another uid");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A child as uid 65534 connects and waits.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                &format!("import socket,time; s=socket.create_connection(('127.0.0.1',{port})); time.sleep(5)"),
            ])
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let (server, peer) = listener.accept().unwrap();
        let uid = peer_uid(peer, server.local_addr().unwrap()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(uid, Some(65534));
    }
}

//! The one UDP socket: dual-stack when the host has IPv6, deliberately sized kernel buffers
//! (past `rmem_max` with `SO_*BUFFORCE` when we have CAP_NET_ADMIN), batched receive through
//! `quinn-udp` (recvmmsg with UDP GRO), and sendmsg with UDP GSO on send.
//!
//! Outer datagrams may be fragmented. quinn-udp forbids fragmentation (it sets
//! `IP_PMTUDISC_PROBE` / `IPV6_DONTFRAG`, right for QUIC, which probes its own path MTU), so a
//! 1420-byte overlay packet (1480/1500 bytes on the wire) would fail with EMSGSIZE on a
//! 1280-byte link and vanish. WireGuard carries no path MTU discovery of its own, and an inner
//! IPv6 packet cannot be told to shrink below 1280 bytes, so like kernel WireGuard (which sends
//! without DF) we let the kernel fragment: `IP_PMTUDISC_DONT` and `IPV6_DONTFRAG` off. Where
//! the route fits a full-size datagram (the normal 1500-byte case) nothing changes.
//!
//! UDP GSO cannot fragment: the kernel refuses a GSO send whose segments exceed the route MTU.
//! Such a batch is then sent one datagram per call, and GSO stays off for that destination
//! for [`GSO_RETRY`] (we send GSO ourselves because quinn-udp would turn GSO off for good).

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use quinn_udp::{RecvMeta, UdpSocketState};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Kernel socket buffer sizes. Big enough to absorb a burst while the receive thread decrypts
/// and writes the TUN (1 MiB did not lower the RTT under load in the benchmark: that wait
/// came from the receive thread's turn length, see the shell's `RECV_BUDGET`).
pub const RECV_BUFFER: usize = 4 << 20;
pub const SEND_BUFFER: usize = 4 << 20;

/// Receive buffers per `recvmmsg` call, each large enough for one GRO super-datagram.
pub const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
const RECV_BUF_LEN: usize = 64 * 1024;

/// How long GSO stays off for a destination whose route refused a GSO batch.
pub const GSO_RETRY: Duration = Duration::from_secs(10);

/// How long a send waits for socket buffer space before the datagram is dropped.
const SEND_WAIT_MS: i32 = 100;

/// The socket, usable from several threads: receives are non-blocking (the receiving thread
/// waits for readiness itself), sends wait briefly for buffer space.
pub struct Udp {
    socket: StdUdpSocket,
    state: UdpSocketState,
    /// Whether the socket is AF_INET6 (IPv4 peers then travel as v4-mapped addresses).
    v6: bool,
    pub local_port: u16,
}

impl AsRawFd for Udp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

fn set_int(fd: i32, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` outlives the call and the length matches its type.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_buf(fd: i32, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
    let v = size as libc::c_int;
    set_int(fd, libc::SOL_SOCKET, force, v).or_else(|_| set_int(fd, libc::SOL_SOCKET, plain, v))
}

/// Let the kernel fragment outer datagrams that do not fit the route (see the module docs).
/// Runs after quinn-udp's setup, which forbids it. The IPv4 option also governs v4-mapped
/// destinations of a dual-stack socket.
fn allow_fragmentation(fd: i32, v6: bool) -> io::Result<()> {
    set_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )?;
    if v6 {
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )?;
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)?;
    }
    Ok(())
}

/// The result of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the kernel, or dropped after an error that retrying would not fix (UDP loss
    /// is what the tunnel's protocols expect).
    Done,
    /// The kernel refused to segment this GSO batch; nothing of it was sent.
    GsoRefused,
}

impl Udp {
    /// Bind `[::]:port` (dual-stack), or `0.0.0.0:port` where IPv6 is unavailable.
    pub fn bind(port: u16) -> io::Result<Udp> {
        let (std_sock, v6) = match StdUdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
            Ok(s) => (s, true),
            Err(_) => (StdUdpSocket::bind(("0.0.0.0", port))?, false),
        };
        std_sock.set_nonblocking(true)?;
        let fd = std_sock.as_raw_fd();
        if let Err(e) = set_buf(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECV_BUFFER) {
            tracing::warn!(error = %e, "could not size the UDP receive buffer");
        }
        if let Err(e) = set_buf(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER) {
            tracing::warn!(error = %e, "could not size the UDP send buffer");
        }
        let state = UdpSocketState::new((&std_sock).into())?;
        allow_fragmentation(fd, v6)?;
        let local_port = std_sock.local_addr()?.port();
        let socket = std_sock;
        tracing::debug!(
            local_port,
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP socket ready"
        );
        Ok(Udp {
            socket,
            state,
            v6,
            local_port,
        })
    }

    /// The address to put in a sockaddr for `to` on this socket.
    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match (self.v6, to.ip()) {
            (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port()),
            _ => to,
        }
    }

    /// One non-blocking batch receive. `WouldBlock` when nothing is queued.
    pub fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv((&self.socket).into(), bufs, meta)
    }

    /// Send `contents`: one datagram, or with `segment` several of `segment` bytes each (the
    /// last may be shorter) in one GSO call. When the send buffer is full it waits up to
    /// [`SEND_WAIT_MS`] for space (backpressure on the sending thread), then drops.
    pub fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<u16>) -> Sent {
        let addr = SockaddrStorage::from(self.wire_addr(to));
        let iov = [IoSlice::new(contents)];
        let fd = self.socket.as_raw_fd();
        let gso;
        let cmsgs: &[ControlMessage<'_>] = match &segment {
            Some(s) => {
                gso = [ControlMessage::UdpGsoSegments(s)];
                &gso
            }
            None => &[],
        };
        let mut waited = false;
        loop {
            match sendmsg(fd, &iov, cmsgs, MsgFlags::empty(), Some(&addr)).map_err(io::Error::from)
            {
                Ok(_) => return Sent::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, for the duration of the call.
                    unsafe { libc::poll(&mut p, 1, SEND_WAIT_MS) };
                }
                // EINVAL: segments larger than the route MTU; EIO: the device cannot segment.
                Err(e)
                    if segment.is_some()
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE)
                        ) =>
                {
                    tracing::debug!(error = %e, %to, "GSO send refused");
                    return Sent::GsoRefused;
                }
                Err(e) => {
                    tracing::debug!(error = %e, %to, "UDP send failed");
                    return Sent::Done;
                }
            }
        }
    }

    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

/// Normalise a received source address (v4-mapped IPv6 back to IPv4).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Receive buffers, allocated once, with a cursor over what the last receive filled, so that
/// the shell can hand datagrams to the engine a few at a time (one `recvmmsg` with GRO may
/// bring thousands of segments).
pub struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    /// Buffers filled by the last receive.
    filled: usize,
    /// The next buffer and byte offset in it.
    at: (usize, usize),
}

impl RecvBufs {
    pub fn new() -> Self {
        RecvBufs {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF_LEN]).collect(),
            meta: vec![RecvMeta::default(); RECV_BATCH],
            filled: 0,
            at: (0, 0),
        }
    }

    /// Whether every datagram of the last receive has been taken.
    pub fn is_drained(&self) -> bool {
        self.at.0 >= self.filled
    }

    /// One non-blocking batch receive into the buffers, replacing what they held.
    pub fn recv(&mut self, udp: &Udp) -> io::Result<usize> {
        let mut slices: [IoSliceMut<'_>; RECV_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(&mut []));
        for (s, b) in slices.iter_mut().zip(self.bufs.iter_mut()) {
            *s = IoSliceMut::new(&mut b[..]);
        }
        self.filled = 0;
        self.at = (0, 0);
        let n = udp.try_recv(&mut slices, &mut self.meta)?;
        self.filled = n;
        Ok(n)
    }

    /// The next received datagram and its source; GRO super-datagrams come out split at
    /// their segment size.
    pub fn next_datagram(&mut self) -> Option<(SocketAddr, &[u8])> {
        while self.at.0 < self.filled {
            let (i, off) = self.at;
            let m = &self.meta[i];
            if off >= m.len {
                self.at = (i + 1, 0);
                continue;
            }
            let end = (off + m.stride.max(1)).min(m.len);
            self.at.1 = end;
            return Some((canonical(m.addr), &self.bufs[i][off..end]));
        }
        None
    }
}

/// A GSO send is one UDP datagram to the kernel before segmentation: its payload must stay
/// below 64 KiB.
const MAX_GSO_BYTES: usize = 65_000;

/// Bound on remembered GSO-refusing destinations (expired ones are pruned when it is reached).
const MAX_GSO_OFF: usize = 1024;

/// A run of datagrams to one destination that travels in one `sendmsg`.
struct Run {
    to: SocketAddr,
    start: usize,
    end: usize,
    /// Segment size: every datagram of the run has it except perhaps the last.
    segment: usize,
    /// A shorter last datagram, or the segment limit, ended the run.
    closed: bool,
    max_segments: usize,
}

/// Outgoing datagrams of one batch, grouped for GSO: consecutive datagrams to the same
/// destination with the same size travel in one `sendmsg` (the last one may be shorter).
pub struct TxBatch {
    buf: Vec<u8>,
    runs: Vec<Run>,
    max_segments: usize,
    /// Destinations whose route refused GSO, until when.
    gso_off: HashMap<SocketAddr, Instant>,
}

impl TxBatch {
    pub fn new(max_segments: usize) -> Self {
        TxBatch {
            buf: Vec::with_capacity(512 * 1024),
            runs: Vec::with_capacity(128),
            max_segments: max_segments.max(1),
            gso_off: HashMap::new(),
        }
    }

    pub fn push(&mut self, to: SocketAddr, d: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(d);
        if let Some(run) = self.runs.last_mut() {
            let n = (run.end - run.start) / run.segment;
            if run.to == to
                && !run.closed
                && d.len() <= run.segment
                && n < run.max_segments
                && run.end == start
                && run.end - run.start + d.len() <= MAX_GSO_BYTES
            {
                run.end = start + d.len();
                if d.len() < run.segment {
                    run.closed = true;
                }
                return;
            }
        }
        // An expired entry stays (so a route that still refuses is not logged again).
        let max_segments = match self.gso_off.get(&to) {
            Some(until) if *until > Instant::now() => 1,
            _ => self.max_segments,
        };
        self.runs.push(Run {
            to,
            start,
            end: start + d.len(),
            segment: d.len().max(1),
            closed: false,
            max_segments,
        });
    }

    pub fn flush(&mut self, udp: &Udp) {
        for run in &self.runs {
            let contents = &self.buf[run.start..run.end];
            let segment = (contents.len() > run.segment).then_some(run.segment as u16);
            if udp.send(run.to, contents, segment) == Sent::GsoRefused {
                let now = Instant::now();
                if self.gso_off.len() >= MAX_GSO_OFF {
                    self.gso_off.retain(|_, until| *until > now);
                }
                if self.gso_off.insert(run.to, now + GSO_RETRY).is_none() {
                    tracing::info!(
                        to = %run.to,
                        segment = run.segment,
                        "route refuses UDP GSO (segments above its MTU?): one datagram per send"
                    );
                }
                for d in contents.chunks(run.segment) {
                    udp.send(run.to, d, None);
                }
            }
        }
        self.runs.clear();
        self.buf.clear();
    }
}

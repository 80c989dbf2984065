//! The one UDP socket: dual-stack when the host has IPv6, deliberately sized kernel buffers
//! (past `rmem_max` with `SO_*BUFFORCE` when we have CAP_NET_ADMIN), and batched I/O through
//! `quinn-udp` (recvmmsg with UDP GRO on receive, sendmsg with UDP GSO on send).

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Kernel socket buffer sizes. Big enough to absorb a burst while the single data plane task
/// is busy with the other direction, small enough not to become a deep queue under load.
pub const RECV_BUFFER: usize = 4 << 20;
pub const SEND_BUFFER: usize = 4 << 20;

/// Receive buffers per `recvmmsg` call, each large enough for one GRO super-datagram.
pub const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
const RECV_BUF_LEN: usize = 64 * 1024;

pub struct Udp {
    pub socket: UdpSocket,
    pub state: UdpSocketState,
    /// Whether the socket is AF_INET6 (IPv4 peers then travel as v4-mapped addresses).
    v6: bool,
    pub local_port: u16,
}

fn set_buf(fd: i32, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
    let v = size as libc::c_int;
    let set = |opt| unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set(force) == 0 || set(plain) == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
        let local_port = std_sock.local_addr()?.port();
        let socket = UdpSocket::from_std(std_sock)?;
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
        self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&self.socket).into(), bufs, meta)
        })
    }

    /// Send `contents` (one datagram, or several of `segment` bytes each with GSO), waiting for
    /// socket space if needed. Errors other than a full buffer are logged and dropped: UDP
    /// loss is what the tunnel's protocols expect.
    pub async fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let t = Transmit {
            destination: self.wire_addr(to),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            let r = self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &t)
            });
            match r {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, %to, "UDP send failed");
                    return;
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

/// Receive buffers, allocated once.
pub struct RecvBufs {
    pub bufs: Vec<Vec<u8>>,
    pub meta: Vec<RecvMeta>,
}

impl RecvBufs {
    pub fn new() -> Self {
        RecvBufs {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF_LEN]).collect(),
            meta: vec![RecvMeta::default(); RECV_BATCH],
        }
    }
}

impl Default for RecvBufs {
    fn default() -> Self {
        Self::new()
    }
}

/// A GSO send is one UDP datagram to the kernel before segmentation: its payload must stay
/// below 64 KiB.
const MAX_GSO_BYTES: usize = 65_000;

/// Outgoing datagrams of one batch, grouped for GSO: consecutive datagrams to the same
/// destination with the same size travel in one `sendmsg` (the last one may be shorter).
pub struct TxBatch {
    buf: Vec<u8>,
    /// (destination, start, end, segment size, closed: a shorter last segment ended the run)
    runs: Vec<(SocketAddr, usize, usize, usize, bool)>,
    max_segments: usize,
}

impl TxBatch {
    pub fn new(max_segments: usize) -> Self {
        TxBatch {
            buf: Vec::with_capacity(512 * 1024),
            runs: Vec::with_capacity(128),
            max_segments: max_segments.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn push(&mut self, to: SocketAddr, d: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(d);
        if let Some(run) = self.runs.last_mut() {
            let (dst, s, e, seg, closed) = run;
            let n = (*e - *s) / *seg;
            if *dst == to
                && !*closed
                && d.len() <= *seg
                && n < self.max_segments
                && *e == start
                && *e - *s + d.len() <= MAX_GSO_BYTES
            {
                *e = start + d.len();
                if d.len() < *seg {
                    *closed = true;
                }
                return;
            }
        }
        self.runs
            .push((to, start, start + d.len(), d.len().max(1), false));
    }

    pub async fn flush(&mut self, udp: &Udp) {
        for &(to, s, e, seg, _) in &self.runs {
            let contents = &self.buf[s..e];
            let segment = (contents.len() > seg).then_some(seg);
            udp.send(to, contents, segment).await;
        }
        self.runs.clear();
        self.buf.clear();
    }
}

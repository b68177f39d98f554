//! RTM_GETLINK dumps that read only what brindle uses of a link: its index, name,
//! MAC, whether it is up and whether it is a veth.
//!
//! rtnetlink decodes every attribute of every link into its enums, in its connection
//! task, before the caller sees the first link: on a host with a thousand veths that
//! held 26 MB at once (measured with heaptrack in `make bench-scale`), every time the
//! reconcile listed veths. Here each message is read where it lies in the receive
//! buffer, and the kernel leaves the statistics out (`RTEXT_FILTER_SKIP_STATS`).
//!
//! The socket is a plain blocking one, opened by `LinuxDataplane::connect` beside its
//! rtnetlink connection, so in the host namespace; a dump runs on tokio's blocking pool.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkMessage, NlaBuffer, NlasIterator, NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::netlink::Link;
use super::{DataplaneError, MacAddr};

const RTM_NEWLINK: u16 = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// `struct ifinfomsg`: family, pad, type (u16), index (i32), flags (u32), change (u32).
const IFINFOMSG_LEN: usize = 16;
/// A dump interrupted by a concurrent change is asked again, this many times at most.
const ATTEMPTS: usize = 5;
/// The kernel answers a dump at once; this only bounds a thread stuck on a broken socket.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// A dump's messages come in chunks of at most 32 KiB (a page on older kernels).
const RECV_BUFFER: usize = 64 * 1024;

/// A netlink socket for link dumps, bound to the namespace it was opened in.
#[derive(Clone)]
pub(crate) struct LinkDumper {
    socket: Arc<Mutex<DumpSocket>>,
}

struct DumpSocket {
    socket: Socket,
    seq: u32,
}

impl LinkDumper {
    /// Opens the socket in the calling thread's namespace.
    pub(crate) fn open() -> Result<Self, DataplaneError> {
        let io = |cause| DataplaneError::Io {
            op: "open netlink socket for link dumps".into(),
            cause,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        set_recv_timeout(&socket, RECV_TIMEOUT).map_err(io)?;
        Ok(Self {
            socket: Arc::new(Mutex::new(DumpSocket { socket, seq: 0 })),
        })
    }

    /// Every link of the namespace.
    pub(crate) async fn dump(&self) -> Result<Vec<Link>, DataplaneError> {
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another dump panicked; the socket is still whole.
            let mut socket = socket.lock().unwrap_or_else(|p| p.into_inner());
            socket.dump()
        })
        .await
        .map_err(|e| DataplaneError::Io {
            op: "dump links".into(),
            cause: io::Error::other(e.to_string()),
        })?
    }
}

impl DumpSocket {
    fn dump(&mut self) -> Result<Vec<Link>, DataplaneError> {
        for _ in 0..ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            self.send_request()?;
            if let Some(links) = self.receive()? {
                return Ok(links);
            }
        }
        Err(DataplaneError::Io {
            op: "dump links".into(),
            cause: io::Error::other(format!(
                "links kept changing during the dump ({ATTEMPTS} attempts interrupted)"
            )),
        })
    }

    fn send_request(&self) -> Result<(), DataplaneError> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Unspec;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|cause| DataplaneError::Io {
                op: "send link dump request".into(),
                cause,
            })?;
        Ok(())
    }

    /// The links of one dump; `None` when the kernel marked it interrupted.
    fn receive(&self) -> Result<Option<Vec<Link>>, DataplaneError> {
        let mut links = Vec::new();
        let mut interrupted = false;
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            let n = self
                .socket
                .recv(&mut buf, libc::MSG_TRUNC)
                .map_err(|cause| DataplaneError::Io {
                    op: "receive link dump".into(),
                    cause,
                })?;
            if n > buf.capacity() {
                return Err(malformed(format!(
                    "a {n}-byte chunk does not fit the {RECV_BUFFER}-byte buffer"
                )));
            }
            match read_chunk(&buf[..n], self.seq, &mut links)? {
                Chunk::More { dump_intr } => interrupted |= dump_intr,
                Chunk::Done { dump_intr } => {
                    return Ok((!(interrupted || dump_intr)).then_some(links));
                }
            }
        }
    }
}

/// What one received chunk said about the dump.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    More { dump_intr: bool },
    Done { dump_intr: bool },
}

/// Reads the messages of one chunk into `links`; messages of another sequence
/// (an answer to an earlier, abandoned request) are skipped.
fn read_chunk(mut chunk: &[u8], seq: u32, links: &mut Vec<Link>) -> Result<Chunk, DataplaneError> {
    let mut dump_intr = false;
    while !chunk.is_empty() {
        let msg = NetlinkBuffer::new_checked(chunk)
            .map_err(|e| malformed(format!("bad message header: {e}")))?;
        let len = msg.length() as usize;
        let ours = msg.sequence_number() == seq;
        dump_intr |= ours && msg.flags() & NLM_F_DUMP_INTR != 0;
        if ours {
            match msg.message_type() {
                NLMSG_DONE => return Ok(Chunk::Done { dump_intr }),
                NLMSG_ERROR => return Err(kernel_error(msg.payload())),
                RTM_NEWLINK => links.push(read_link(msg.payload())?),
                _ => {}
            }
        }
        // Messages are 4-byte aligned; the last one may end the chunk unpadded.
        chunk = chunk.get(align4(len)..).unwrap_or_default();
    }
    Ok(Chunk::More { dump_intr })
}

/// One RTM_NEWLINK payload: `ifinfomsg` and the attributes brindle reads.
fn read_link(payload: &[u8]) -> Result<Link, DataplaneError> {
    let Some(header) = payload.get(..IFINFOMSG_LEN) else {
        return Err(malformed(format!("a {}-byte link message", payload.len())));
    };
    let index = u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes"));
    let flags = u32::from_ne_bytes(header[8..12].try_into().expect("4 bytes"));
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
        is_veth: false,
        up: flags & LinkFlags::Up.bits() != 0,
    };
    for attr in NlasIterator::new(&payload[IFINFOMSG_LEN..]) {
        let attr = attr.map_err(|e| malformed(format!("link #{index}: bad attribute: {e}")))?;
        match attr.kind() & NLA_TYPE_MASK {
            IFLA_IFNAME => link.name = c_string(attr.value()),
            IFLA_ADDRESS => link.mac = MacAddr::from_slice(attr.value()),
            IFLA_LINKINFO => link.is_veth = kind_is(&attr, "veth"),
            _ => {}
        }
    }
    Ok(link)
}

/// Whether the `IFLA_INFO_KIND` inside an `IFLA_LINKINFO` nest is `kind`.
fn kind_is(linkinfo: &NlaBuffer<&[u8]>, kind: &str) -> bool {
    NlasIterator::new(linkinfo.value())
        .filter_map(Result::ok)
        .find(|a| a.kind() & NLA_TYPE_MASK == IFLA_INFO_KIND)
        .is_some_and(|a| a.value().strip_suffix(b"\0").unwrap_or(a.value()) == kind.as_bytes())
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// The errno of an NLMSG_ERROR payload (`struct nlmsgerr`: a negative errno first).
fn kernel_error(payload: &[u8]) -> DataplaneError {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0);
    DataplaneError::from_errno("dump links", code)
}

fn malformed(what: String) -> DataplaneError {
    DataplaneError::Io {
        op: "read link dump".into(),
        cause: io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: the fd is open for the socket's lifetime; tv is a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` with `payload`, padded to 4 bytes.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn link_payload(index: u32, up: bool, name: &str, kind: Option<&str>) -> Vec<u8> {
        let mut p = vec![0u8; IFINFOMSG_LEN];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        p[8..12].copy_from_slice(&u32::from(up).to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        p.extend(attr(IFLA_ADDRESS, &[0x0e, 0x62, 0, 0, 0, 7]));
        p.extend(attr(4, &1500u32.to_ne_bytes())); // IFLA_MTU: skipped
        if let Some(kind) = kind {
            let info = attr(IFLA_INFO_KIND, format!("{kind}\0").as_bytes());
            p.extend(attr(IFLA_LINKINFO | 0x8000, &info)); // NLA_F_NESTED
        }
        p
    }

    #[test]
    fn a_dump_chunk_reads_names_indexes_macs_and_veths() {
        let mut chunk = message(RTM_NEWLINK, 2, 7, &link_payload(1, true, "lo", None));
        chunk.extend(message(
            RTM_NEWLINK,
            2,
            7,
            &link_payload(9, false, "brl0a1b", Some("veth")),
        ));
        let mut links = Vec::new();
        assert_eq!(
            read_chunk(&chunk, 7, &mut links).unwrap(),
            Chunk::More { dump_intr: false }
        );
        assert_eq!(links.len(), 2);
        assert_eq!((links[0].index, links[0].name.as_str()), (1, "lo"));
        assert!(links[0].up && !links[0].is_veth);
        assert_eq!((links[1].index, links[1].name.as_str()), (9, "brl0a1b"));
        assert!(!links[1].up && links[1].is_veth);
        assert_eq!(links[1].mac.unwrap().to_string(), "0e:62:00:00:00:07");
    }

    #[test]
    fn done_ends_the_dump_and_an_interrupted_dump_says_so() {
        let mut chunk = message(
            RTM_NEWLINK,
            2 | NLM_F_DUMP_INTR,
            3,
            &link_payload(2, true, "a", None),
        );
        chunk.extend(message(NLMSG_DONE, 2, 3, &0i32.to_ne_bytes()));
        let mut links = Vec::new();
        assert_eq!(
            read_chunk(&chunk, 3, &mut links).unwrap(),
            Chunk::Done { dump_intr: true }
        );
    }

    #[test]
    fn another_requests_messages_are_skipped() {
        let mut chunk = message(RTM_NEWLINK, 2, 1, &link_payload(2, true, "old", None));
        chunk.extend(message(NLMSG_ERROR, 0, 1, &(-libc::EBUSY).to_ne_bytes()));
        chunk.extend(message(
            RTM_NEWLINK,
            2,
            2,
            &link_payload(3, true, "new", None),
        ));
        let mut links = Vec::new();
        read_chunk(&chunk, 2, &mut links).unwrap();
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
    }

    #[test]
    fn a_kernel_error_keeps_its_errno() {
        let chunk = message(NLMSG_ERROR, 0, 4, &(-libc::EPERM).to_ne_bytes());
        let err = read_chunk(&chunk, 4, &mut Vec::new()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EPERM));
    }

    #[test]
    fn truncated_or_garbled_chunks_give_errors_not_panics() {
        let good = message(
            RTM_NEWLINK,
            2,
            5,
            &link_payload(2, true, "eth0", Some("veth")),
        );
        for cut in 0..good.len() {
            let _ = read_chunk(&good[..cut], 5, &mut Vec::new());
        }
        let mut garbled = good.clone();
        for i in 0..garbled.len() {
            garbled[i] ^= 0xff;
            let _ = read_chunk(&garbled, 5, &mut Vec::new());
            garbled[i] ^= 0xff;
        }
        let short = message(RTM_NEWLINK, 2, 5, &[0u8; 8]);
        assert!(read_chunk(&short, 5, &mut Vec::new()).is_err());
    }
}

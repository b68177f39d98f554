//! How many keys the next page of a listing asks for: as many as fill about
//! [`PAGE_BYTES_AIM`] at the size of the records just read, within the store's page
//! size. Fewer, larger pages matter on etcd 3.4, where every page walks the index from
//! its first key to the end of the range (so a listing costs pages × keys), and a
//! listing of small records (handles) should not pay for the large ones (blocks) it
//! met before.

/// A page of at most about this many bytes is comfortably under the client's message
/// limit (4 MiB).
pub(super) const PAGE_BYTES_AIM: usize = 2 << 20;

/// Keys the first page asks for (at most the page size), before any record size is
/// known: 100 blocks full of allocations still fit the message limit.
const FIRST_PAGE_KEYS: usize = 100;

/// A page may grow at most this many times over the one before, so a listing moving
/// from small records to large ones (affinities, then blocks) overshoots little.
const GROWTH: usize = 8;

/// The limit of the page after one of `keys` keys and `bytes` bytes read with `limit`,
/// at most `max`.
fn next_limit(limit: usize, keys: usize, bytes: usize, max: usize) -> usize {
    let fitting = match bytes.checked_div(keys) {
        Some(per_key) if per_key > 0 => PAGE_BYTES_AIM / per_key,
        _ => max,
    };
    fitting.min(limit.saturating_mul(GROWTH)).clamp(1, max)
}

/// The limit to try again with after a page of `limit` keys came to `found` bytes,
/// more than the client takes: the share of keys that fits [`PAGE_BYTES_AIM`] at that
/// size (at most half, at least 1); half when the size is unknown.
fn shrunk_limit(limit: usize, found: Option<usize>) -> usize {
    let half = limit / 2;
    let fitting = match found {
        Some(bytes) if bytes > 0 => {
            let share = (limit as u128 * PAGE_BYTES_AIM as u128) / bytes as u128;
            usize::try_from(share).unwrap_or(half)
        }
        _ => half,
    };
    fitting.min(half).max(1)
}

/// The size tonic reports in "decoded message length too large: found N bytes, ...".
pub(super) fn found_bytes(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("found ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The page sizes of one listing: [`next_limit`] after each page read, [`shrunk_limit`]
/// after one the client refused. A refused page also leaves a floor under the record
/// size for as many keys as it asked for: the large records are somewhere in that
/// range, and without the floor a run of small records before them (affinities before
/// blocks) would grow the pages into them again and again.
#[derive(Debug)]
pub(super) struct PageSizer {
    limit: usize,
    max: usize,
    floor: Option<Floor>,
}

/// At least `per_key` bytes per key for the next `keys_left` keys.
#[derive(Debug, Clone, Copy)]
struct Floor {
    per_key: usize,
    keys_left: usize,
}

impl PageSizer {
    /// Pages of at most `max` keys, the first of at most [`FIRST_PAGE_KEYS`].
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            limit: max.min(FIRST_PAGE_KEYS),
            max,
            floor: None,
        }
    }

    /// How many keys the next page asks for.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// A page of `keys` keys and `bytes` bytes was read.
    pub(super) fn read(&mut self, keys: usize, bytes: usize) {
        let mut bytes = bytes;
        if let Some(floor) = &mut self.floor {
            bytes = bytes.max(floor.per_key.saturating_mul(keys));
            floor.keys_left = floor.keys_left.saturating_sub(keys);
            if floor.keys_left == 0 {
                self.floor = None;
            }
        }
        self.limit = next_limit(self.limit, keys, bytes, self.max);
    }

    /// The client refused the page as `found` bytes (when it said). False when the
    /// page was a single key: fewer cannot help.
    pub(super) fn refused(&mut self, found: Option<usize>) -> bool {
        let refused = self.limit;
        if refused <= 1 {
            return false;
        }
        self.limit = shrunk_limit(refused, found);
        // The floor of an earlier refusal gives way: its large records are the ones
        // being read now.
        self.floor = Some(Floor {
            per_key: found.map_or(PAGE_BYTES_AIM / self.limit, |bytes| bytes / refused),
            keys_left: refused,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DEFAULT_PAGE_SIZE;

    #[test]
    fn small_records_get_large_pages_up_to_the_page_size() {
        // 100 handles of 150 bytes: the next page grows 8 times, then to what fits.
        assert_eq!(next_limit(100, 100, 15_000, 10_000), 800);
        assert_eq!(next_limit(800, 800, 120_000, 20_000), 6_400);
        assert_eq!(
            next_limit(6_400, 6_400, 960_000, 20_000),
            PAGE_BYTES_AIM / 150
        );
        assert_eq!(next_limit(6_400, 6_400, 960_000, 10_000), 10_000);
        // Keys only, or an empty page: the page size.
        assert_eq!(next_limit(10_000, 0, 0, 10_000), 10_000);
    }

    #[test]
    fn large_records_get_small_pages() {
        // Blocks of 16 kB: 128 fit.
        assert_eq!(next_limit(100, 100, 1_600_000, 10_000), 131);
        // A single record larger than the aim: one key at a time.
        assert_eq!(next_limit(10, 1, 3_000_000, 10_000), 1);
    }

    #[test]
    fn a_page_too_large_shrinks_to_what_fits() {
        assert_eq!(shrunk_limit(6_400, Some(27 << 20)), 474);
        // Never more than half, never below one key.
        assert_eq!(shrunk_limit(500, Some(4_200_000)), 249);
        assert_eq!(shrunk_limit(500, Some(4_194_304)), 250);
        assert_eq!(shrunk_limit(1, Some(8 << 20)), 1);
        assert_eq!(shrunk_limit(500, None), 250);
        let message =
            "Error, decoded message length too large: found 6291456 bytes, the limit is: 4194304 bytes";
        assert_eq!(found_bytes(message), Some(6_291_456));
        assert_eq!(found_bytes("message length too large"), None);
    }

    /// Lists records of the given sizes (in order) as etcd and the client would,
    /// with a 4 MiB message limit: (requests, refused pages, largest page in bytes).
    fn list(sizes: &[usize], max: usize) -> (usize, usize, usize) {
        const MESSAGE_LIMIT: usize = 4 << 20;
        let mut sizer = PageSizer::new(max);
        let (mut from, mut requests, mut refused, mut largest) = (0, 0, 0, 0);
        while from < sizes.len() {
            requests += 1;
            let end = (from + sizer.limit()).min(sizes.len());
            let bytes: usize = sizes[from..end].iter().sum();
            if bytes > MESSAGE_LIMIT {
                refused += 1;
                assert!(sizer.refused(Some(bytes)), "a single record over the limit");
                continue;
            }
            largest = largest.max(bytes);
            sizer.read(end - from, bytes);
            from = end;
        }
        (requests, refused, largest)
    }

    /// The benchmark's IPAM keys in one listing: 1,716 affinities (100 bytes), as
    /// many blocks (16 kB) and 100,500 handles (150 bytes).
    #[test]
    fn a_listing_from_small_records_into_large_ones_and_back() {
        let mut sizes = vec![100; 1_716];
        sizes.extend(std::iter::repeat_n(16_000, 1_716));
        sizes.extend(std::iter::repeat_n(150, 100_500));
        let (requests, refused, largest) = list(&sizes, DEFAULT_PAGE_SIZE);
        assert!(refused <= 2, "{refused} pages refused");
        assert!(requests <= 35, "{requests} requests");
        assert!(largest <= 4 << 20);
        // The handles alone: a small first page, then pages of the page size.
        let (requests, refused, _) = list(&vec![150; 100_500], DEFAULT_PAGE_SIZE);
        assert_eq!((requests, refused), (13, 0));
        // The blocks alone: 100 per page fit from the start.
        let (requests, refused, _) = list(&vec![16_000; 1_716], DEFAULT_PAGE_SIZE);
        assert_eq!((requests, refused), (14, 0));
    }
}

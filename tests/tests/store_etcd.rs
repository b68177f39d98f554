//! The `Store` contract on a real etcd: paginated, consistent listings (more records
//! than one page, each seen once while other writers move records; pages smaller than
//! asked when records are large), listings and watches at past and compacted
//! revisions.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brindle_ipam::store::{Listing, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent};
use brindle_ipam::{EtcdConfig, EtcdStore};
use brindle_tests::etcd::Etcd;

async fn store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..EtcdConfig::default()
    })
    .await
    .expect("store")
}

fn put(key: &str, value: impl Into<Vec<u8>>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

async fn write(store: &EtcdStore, ops: Vec<Op>) -> i64 {
    let txn = Txn {
        ops,
        ..Txn::default()
    };
    match store.txn(txn).await.expect("write") {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("unconditional write conflicted: {other:?}"),
    }
}

async fn current_revision(store: &EtcdStore) -> i64 {
    store.list_at("/none/", None).await.expect("list").revision
}

fn ids(listing: &Listing) -> Vec<String> {
    listing
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.value.clone()).expect("utf-8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_listing_sees_every_record_once_while_records_move() {
    const RECORDS: usize = 120;
    const PAGE: usize = 7;
    let etcd = Etcd::start();
    let paged = store(&etcd).await.with_page_size(PAGE);
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(40) {
        let ops = chunk
            .iter()
            .map(|i| put(&format!("/r/k{i:04}"), i.to_string()))
            .collect();
        write(&paged, ops).await;
    }

    // Another client moves records from the front of the range to its end and back,
    // each move one transaction: a listing that is not at one revision sees some twice
    // or not at all.
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (stop, writer) = (stop.clone(), store(&etcd).await);
        tokio::spawn(async move {
            let mut moves = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = moves % RECORDS;
                let (k, z) = (format!("/r/k{i:04}"), format!("/r/z{i:04}"));
                let (from, to) = if (moves / RECORDS).is_multiple_of(2) {
                    (k, z)
                } else {
                    (z, k)
                };
                write(&writer, vec![del(&from), put(&to, i.to_string())]).await;
                moves += 1;
            }
            moves
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listing = paged.list_at("/r/", None).await.expect("listing");
    let keys = paged.list_keys("/r/").await.expect("keys");
    let after = current_revision(&paged).await;
    stop.store(true, Ordering::Relaxed);
    let moves = mover.await.expect("mover");

    let seen = ids(&listing);
    let unique: BTreeSet<&String> = seen.iter().collect();
    eprintln!(
        "{} records in pages of {PAGE} at revision {}; {moves} moves, revision {after} after",
        seen.len(),
        listing.revision
    );
    assert_eq!(seen.len(), RECORDS, "each record once: {seen:?}");
    assert_eq!(unique.len(), RECORDS, "each record once: {seen:?}");
    assert!(
        after > listing.revision,
        "the mover wrote while the listing ran"
    );
    assert!(listing.kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert!(listing
        .kvs
        .iter()
        .all(|kv| kv.mod_revision <= listing.revision));
    assert_eq!(keys.len(), RECORDS, "keys only, each record once");

    // The same revision read again, in one page, gives the same listing.
    let whole = store(&etcd).await.with_page_size(10_000);
    let again = whole
        .list_at("/r/", Some(listing.revision))
        .await
        .expect("listing again");
    assert_eq!(again, listing);
}

#[tokio::test]
async fn large_records_are_read_in_pages_under_the_message_limit() {
    // 48 records of 100 kB: one response with all of them exceeds the client's 4 MiB
    // limit, so pages must stay under it.
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    for i in 0..48 {
        let value = format!("{i:03}{}", "x".repeat(100_000));
        write(&s, vec![put(&format!("/big/{i:03}"), value)]).await;
    }
    let listing = s.list_at("/big/", None).await.expect("big listing");
    assert_eq!(listing.kvs.len(), 48);
    for (i, kv) in listing.kvs.iter().enumerate() {
        assert_eq!(kv.key, format!("/big/{i:03}"));
        assert!(kv.value.starts_with(format!("{i:03}x").as_bytes()));
    }
}

#[tokio::test]
async fn listings_and_watches_at_past_and_compacted_revisions() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let r1 = write(&s, vec![put("/w/a", "1"), put("/x", "x")]).await;
    let r2 = write(&s, vec![del("/w/a"), put("/w/b", "2")]).await;

    // A past revision, listed and replayed.
    let then = s.list_at("/w/", Some(r1)).await.expect("listing at r1");
    assert_eq!(ids(&then), vec!["1"]);
    let mut w = s.watch("/w/", r1);
    let mut events = Vec::new();
    while events.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("history replayed")
            .expect("watch open")
            .expect("no error");
        events.extend(batch.events);
    }
    let got: Vec<(String, bool, i64)> = events
        .iter()
        .map(|e| (e.key().to_string(), e.value().is_some(), e.revision()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/w/a".into(), true, r1),
            ("/w/a".into(), false, r2),
            ("/w/b".into(), true, r2),
        ]
    );
    // Live events follow on the same watch.
    let r3 = write(&s, vec![put("/w/c", "3")]).await;
    let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("live event")
        .expect("watch open")
        .expect("no error");
    assert!(matches!(&batch.events[..], [WatchEvent::Put(kv)] if kv.key == "/w/c"));
    assert_eq!(batch.last_revision(), r3);
    drop(w);

    // Compacted: both refuse with the error that tells the consumer to load again.
    etcd.etcdctl(&["compaction", &r3.to_string()]);
    let err = s.list_at("/w/", Some(r1)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { revision, .. } if revision == r1),
        "{err}"
    );
    assert!(err.to_string().contains("load the state again"), "{err}");
    let mut w = s.watch("/w/", r1);
    let first = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an answer");
    assert!(
        matches!(first, Some(Err(StoreError::Compacted { revision, compacted })) if revision == r1 && compacted == r3),
        "{first:?}"
    );
    assert!(w.next().await.is_none(), "the watch ends after its error");
    // At the compaction revision itself a listing still works.
    let now = s.list_at("/w/", Some(r3)).await.expect("listing at r3");
    assert_eq!(ids(&now), vec!["2", "3"]);
}

use std::collections::BTreeSet;

use super::*;
use crate::store::prefix_end;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

async fn write(store: &MemoryStore, ops: Vec<Op>) -> i64 {
    match store
        .txn(Txn {
            ops,
            ..Txn::default()
        })
        .await
        .unwrap()
    {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("unconditional write conflicted: {other:?}"),
    }
}

#[tokio::test]
async fn create_if_absent_succeeds_once() {
    let store = MemoryStore::new();
    let claim = Txn {
        compares: vec![Compare::unchanged("/k", None)],
        ops: vec![put("/k", "a")],
        read_on_conflict: vec!["/k".into()],
    };
    // As etcd: a fresh store is at revision 1, the first write makes 2.
    assert!(matches!(
        store.txn(claim.clone()).await.unwrap(),
        TxnOutcome::Committed { revision: 2 }
    ));
    match store.txn(claim).await.unwrap() {
        TxnOutcome::Conflict { current } => {
            assert_eq!(current[0].1.as_ref().unwrap().value, b"a");
            assert_eq!(current[0].1.as_ref().unwrap().mod_revision, 2);
        }
        other => panic!("second claim must conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn stale_revision_conflicts_and_writes_nothing() {
    let store = MemoryStore::new();
    write(&store, vec![put("/a", "1"), put("/b", "1")]).await;
    let stale = Txn {
        compares: vec![Compare::unchanged("/a", Some(0))],
        ops: vec![put("/b", "2")],
        read_on_conflict: vec![],
    };
    assert!(matches!(
        store.txn(stale).await.unwrap(),
        TxnOutcome::Conflict { .. }
    ));
    assert_eq!(store.get("/b").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.list("/").await.unwrap().len(), 2);
    assert_eq!(store.list_keys("/b").await.unwrap(), vec!["/b".to_string()]);
}

#[tokio::test]
async fn a_transaction_that_changes_nothing_keeps_the_revision() {
    let store = MemoryStore::new();
    let r = write(&store, vec![put("/a", "1")]).await;
    assert_eq!(write(&store, vec![del("/missing")]).await, r);
    assert_eq!(store.revision(), r);
}

#[test]
fn prefix_ends_follow_etcd() {
    assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    assert_eq!(prefix_end(b""), vec![0]);
}

/// `/r/k000`..: records whose value is their id.
async fn seed(store: &MemoryStore, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|i| put(&format!("/r/k{i:04}"), &i.to_string()))
            .collect();
        write(store, ops).await;
    }
}

/// The pagination contract: a listing larger than a page, read while another task
/// moves records from the front of the range to its end (delete + put in one
/// transaction), sees each record exactly once, as of one revision.
#[tokio::test]
async fn a_paged_listing_sees_every_record_once_while_records_move() {
    let store = MemoryStore::new().with_page_size(7);
    seed(&store, 100).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                let (from, to) = (format!("/r/k{i:04}"), format!("/r/z{i:04}"));
                write(&store, vec![del(&from), put(&to, &i.to_string())]).await;
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::task::yield_now().await;
    let listing = store.list_at("/r/", None).await.unwrap();
    let moved_during = store.revision() - listing.revision;
    writer.await.unwrap();
    assert!(
        moved_during > 5,
        "the writer ran between pages ({moved_during})"
    );

    let ids: Vec<String> = listing
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 100, "every record once: {ids:?}");
    assert_eq!(unique.len(), 100);
    let keys: Vec<&String> = listing.kvs.iter().map(|kv| &kv.key).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted: {keys:?}");
    assert!(listing
        .kvs
        .iter()
        .all(|kv| kv.mod_revision <= listing.revision));
    // The same revision read again, in one page, gives the same listing.
    let again = MemoryStore::with_page_size(store.clone(), 1000)
        .list_at("/r/", Some(listing.revision))
        .await
        .unwrap();
    assert_eq!(again, listing);
    // Keys only, and the current state: every record moved.
    let keys = store.list_keys("/r/").await.unwrap();
    assert_eq!(keys.len(), 100);
    assert!(keys.iter().all(|k| k.starts_with("/r/z")));
}

#[tokio::test]
async fn listings_at_past_revisions_until_compacted() {
    let store = MemoryStore::new().with_page_size(2);
    let r1 = write(
        &store,
        vec![put("/p/a", "1"), put("/p/b", "1"), put("/q", "x")],
    )
    .await;
    let r2 = write(
        &store,
        vec![put("/p/a", "2"), del("/p/b"), put("/p/c", "2")],
    )
    .await;
    let then = store.list_at("/p/", Some(r1)).await.unwrap();
    let at = |l: &Listing| {
        l.kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    String::from_utf8(kv.value.clone()).unwrap(),
                    kv.mod_revision,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        at(&then),
        vec![
            ("/p/a".into(), "1".into(), r1),
            ("/p/b".into(), "1".into(), r1)
        ]
    );
    let now = store.list_at("/p/", None).await.unwrap();
    assert_eq!(now.revision, r2);
    assert_eq!(
        at(&now),
        vec![
            ("/p/a".into(), "2".into(), r2),
            ("/p/c".into(), "2".into(), r2)
        ]
    );
    assert!(store.list_at("/p/", Some(r2 + 1)).await.is_err());

    store.compact(r2);
    let err = store.list_at("/p/", Some(r1)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { revision, compacted } if revision == r1 && compacted == r2),
        "{err}"
    );
    assert_eq!(store.list_at("/p/", Some(r2)).await.unwrap(), now);
}

#[tokio::test]
async fn a_watch_replays_history_then_follows_and_filters_by_prefix() {
    let store = MemoryStore::new();
    let r1 = write(&store, vec![put("/w/a", "1"), put("/other", "x")]).await;
    let r2 = write(&store, vec![del("/w/a"), put("/w/b", "2")]).await;
    let mut w = store.watch("/w/", r1);
    let batch = w.next().await.unwrap().unwrap();
    let seen: Vec<(String, Option<Vec<u8>>, i64)> = batch
        .events
        .iter()
        .map(|e| {
            (
                e.key().to_string(),
                e.value().map(<[u8]>::to_vec),
                e.revision(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("/w/a".into(), Some(b"1".to_vec()), r1),
            ("/w/a".into(), None, r2),
            ("/w/b".into(), Some(b"2".to_vec()), r2),
        ]
    );
    assert_eq!(batch.last_revision(), r2);

    // Live: a write elsewhere wakes nothing; one under the prefix is delivered.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            write(&store, vec![put("/other", "y")]).await;
            write(&store, vec![put("/w/c", "3")]).await
        })
    };
    let batch = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();
    let r4 = writer.await.unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].key(), "/w/c");
    assert_eq!(batch.last_revision(), r4);

    // Start 0 = from now on.
    let mut fresh = store.watch("/w/", 0);
    let r5 = write(&store, vec![put("/w/d", "4")]).await;
    let batch = fresh.next().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.last_revision(), r5);
}

#[tokio::test]
async fn a_watch_behind_the_bounded_history_reports_compaction_and_ends() {
    let store = MemoryStore::new().with_history(3);
    let start = store.revision() + 1;
    let mut w = store.watch("/w/", start);
    for i in 0..5 {
        write(&store, vec![put("/w/k", &i.to_string())]).await;
    }
    // Five revisions written, three kept: the watch's next revision is gone.
    match w.next().await {
        Some(Err(StoreError::Compacted {
            revision,
            compacted,
        })) => {
            assert_eq!(revision, start);
            assert_eq!(compacted, start + 1);
        }
        other => panic!("expected compaction, got {other:?}"),
    }
    assert!(w.next().await.is_none(), "the watch ends after its error");
    // From inside the kept history it works.
    let mut w = store.watch("/w/", store.revision() - 2);
    assert_eq!(w.next().await.unwrap().unwrap().events.len(), 3);
    // A listing at a revision that fell out is refused.
    assert!(matches!(
        store.list_at("/w/", Some(start)).await,
        Err(StoreError::Compacted { .. })
    ));
}

/// A value larger than a record may be is refused before anything is written, naming
/// the key and the limit; one exactly at the limit is written.
#[tokio::test]
async fn an_oversized_record_is_refused_and_nothing_written() {
    use crate::store::MAX_RECORD_BYTES;
    let store = MemoryStore::new();
    let before = store.revision();
    let txn = Txn {
        ops: vec![
            put("/small", "x"),
            Op::Put {
                key: "/t/v1/ipam/blocks/10.0.0.0-26".into(),
                value: vec![b' '; MAX_RECORD_BYTES + 1],
            },
        ],
        ..Txn::default()
    };
    let err = store.txn(txn).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::RecordTooLarge { key, size, limit }
            if key == "/t/v1/ipam/blocks/10.0.0.0-26" && *size == MAX_RECORD_BYTES + 1 && *limit == MAX_RECORD_BYTES),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("record /t/v1/ipam/blocks/10.0.0.0-26 would be 1572865 bytes long")
            && text.contains("1572864"),
        "{text}"
    );
    assert_eq!(store.revision(), before, "nothing written");
    assert_eq!(store.get("/small").await.unwrap(), None);
    let fits = Op::Put {
        key: "/fits".into(),
        value: vec![b' '; MAX_RECORD_BYTES],
    };
    write(&store, vec![fits]).await;
}

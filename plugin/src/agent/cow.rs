//! A map shared between snapshots: cloning a snapshot copies a pointer, and the first
//! write to a shared map copies that map alone (`Arc::make_mut`), so publishing a
//! new snapshot after a change costs the section that changed, not the cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A `BTreeMap` behind an `Arc`, copied on its first write while shared.
pub struct CowMap<K, V>(Arc<BTreeMap<K, V>>);

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self(Arc::new(BTreeMap::new()))
    }
}

impl<K, V> Clone for CowMap<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K, V> Deref for CowMap<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K: Clone + Ord, V: Clone> DerefMut for CowMap<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        Arc::make_mut(&mut self.0)
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for CowMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<K, V> CowMap<K, V> {
    /// Whether `self` and `other` are the same map, not merely equal ones.
    pub fn shares(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_one_is_written() {
        let mut a: CowMap<String, u32> = CowMap::default();
        a.insert("x".into(), 1);
        let b = a.clone();
        assert!(a.shares(&b));
        a.insert("y".into(), 2);
        assert!(!a.shares(&b));
        assert_eq!(b.len(), 1);
        assert_eq!(a.len(), 2);
        // A map no one else holds is written in place.
        let before = Arc::as_ptr(&a.0);
        a.insert("z".into(), 3);
        assert_eq!(before, Arc::as_ptr(&a.0));
    }
}

//! TCP (SPEC B.3/B.4). This file is replaced by the TCP core's at merge.

// `allow(dead_code)`: the users of these modules live on branch `tcp`.
#[allow(dead_code)]
pub(crate) mod buffer;
#[allow(dead_code)]
pub(crate) mod congestion;
#[allow(dead_code)]
pub(crate) mod rtt;
#[allow(dead_code)]
pub(crate) mod sack;
#[allow(dead_code)]
pub(crate) mod syncookies;

//! Table tests of the exchange (placeholder replaced below).

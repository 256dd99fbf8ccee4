//! Distributed cron (being written).

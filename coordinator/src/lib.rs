//! The kka coordinator library: curriculum state machine, schedules, pools and reports.

// tests for supervisor.rs; see supervisor.rs

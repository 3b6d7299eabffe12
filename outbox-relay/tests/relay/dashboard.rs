//! The dashboard in a real (headless) browser with no network.

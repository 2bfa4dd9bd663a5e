//! The UniFFI bindings generator, built from the same `uniffi` version as
//! the library: `uniffi-bindgen generate --library libbaraza_ffi.so
//! --language kotlin|swift --out-dir DIR` (what `scripts/bindings` runs).

fn main() {
    uniffi::uniffi_bindgen_main()
}

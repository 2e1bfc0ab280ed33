//! Feeds WebAssembly to the install path (`clawos_bridge::runtime::Runtime`):
//! `precompile` (validate the component and compile it to `.cwasm`, what the
//! daemon's compile worker runs for `Registry::install`), then load the
//! artifact and `prepare` it (link it against the bridge's host interfaces,
//! as install does next). The first byte picks the input: the raw bytes as
//! they are; a wasm-smith core module, which is not a component and must be
//! refused; that module inside a component (with a core instance of it when
//! it has no imports); or a wasm-smith component. Nothing may panic; every
//! refusal carries the code install gives it.
#![no_main]

use arbitrary::{Result, Unstructured};
use clawos_bridge::config::Config;
use clawos_bridge::error::Code;
use clawos_bridge::runtime::Runtime;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wasm_encoder::{ComponentSectionId, InstanceSection, RawSection};
use wasmtime::component::Component;

/// The daemon's engine and linker with the default configuration, made once.
static RUNTIME: LazyLock<Runtime> =
    LazyLock::new(|| Runtime::idle(&Config::default()).expect("the default runtime builds"));

/// wasm-smith's settings: the proposals wasmtime 50 compiles without its
/// `gc` and `threads` features (the bridge builds it without them), and small
/// bounds so that one execution compiles in milliseconds.
fn smith_config(u: &mut Unstructured<'_>, imports: bool) -> Result<wasm_smith::Config> {
    let mut c = wasm_smith::Config {
        gc_enabled: false,
        exceptions_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        custom_page_sizes_enabled: false,
        custom_descriptors_enabled: false,
        compact_imports_enabled: false,
        reference_types_enabled: false,
        max_types: 16,
        max_type_size: 100,
        max_imports: if imports { 4 } else { 0 },
        max_funcs: 8,
        max_instructions: 64,
        max_nesting_depth: 6,
        max_globals: 8,
        max_exports: 8,
        max_memories: 1,
        max_tables: 1,
        max_table_elements: 1000,
        max_elements: 16,
        max_element_segments: 4,
        max_data_segments: 4,
        max_tags: 0,
        max_components: 2,
        max_instances: 2,
        max_modules: 2,
        max_aliases: 16,
        max_values: 4,
        ..wasm_smith::Config::default()
    };
    c.simd_enabled = u.arbitrary()?;
    c.relaxed_simd_enabled = c.simd_enabled && u.arbitrary()?;
    c.memory64_enabled = u.arbitrary()?;
    c.tail_call_enabled = u.arbitrary()?;
    c.wide_arithmetic_enabled = u.arbitrary()?;
    Ok(c)
}

/// `module` as the only core module of a component, instantiated when it
/// has no imports.
fn wrap(module: &[u8], instantiate: bool) -> Vec<u8> {
    let mut c = wasm_encoder::Component::new();
    c.section(&RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: module,
    });
    if instantiate {
        let mut instances = InstanceSection::new();
        instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        c.section(&instances);
    }
    c.finish()
}

/// Install's steps short of the disk: precompile, load, link.
fn install(bytes: &[u8]) -> std::result::Result<(), clawos_bridge::error::Failure> {
    let artifact = RUNTIME.precompile(bytes)?;
    // SAFETY: `artifact` is what this process's engine produced a moment
    // ago, never written anywhere: the condition wasmtime sets for
    // deserializing (install loads the file it wrote the same way).
    let component = unsafe { Component::deserialize(RUNTIME.engine(), &artifact) };
    let component = component.map_err(|e| {
        // As install's loader: a pooling count over its limit is 105.
        let code = if e.to_string().contains("pooling allocator") {
            Code::WasmResourceLimit
        } else {
            Code::WasmInvalidComponent
        };
        clawos_bridge::error::Failure::new(code, format!("cannot load artifact: {e:#}"))
    })?;
    RUNTIME.prepare(&component).map(|_| ())
}

fn refused_as_install_does(bytes: &[u8]) {
    if let Err(e) = install(bytes) {
        assert!(
            matches!(
                e.code,
                Code::WasmInvalidComponent | Code::WasmLinkError | Code::WasmResourceLimit
            ),
            "install refused with {:?}: {}",
            e.code,
            e.message
        );
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    match u.int_in_range(0u8..=3)? {
        0 => refused_as_install_does(u.take_rest()),
        1 => {
            let config = smith_config(&mut u, true)?;
            let module = wasm_smith::Module::new(config, &mut u)?.to_bytes();
            let e = RUNTIME
                .precompile(&module)
                .expect_err("a core module is not a component");
            assert_eq!(e.code, Code::WasmInvalidComponent, "{}", e.message);
        }
        2 => {
            let imports = u.arbitrary()?;
            let config = smith_config(&mut u, imports)?;
            let module = wasm_smith::Module::new(config, &mut u)?.to_bytes();
            refused_as_install_does(&wrap(&module, !imports));
        }
        _ => {
            let config = smith_config(&mut u, true)?;
            let component = wasm_smith::Component::new(config, &mut u)?.to_bytes();
            refused_as_install_does(&component);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

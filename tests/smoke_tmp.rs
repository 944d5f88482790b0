use stackful::*;
#[test]
fn smoke() {
    let mut co = Coroutine::new(|y, a: i32| { let b = y.suspend(a * 10); let c = y.suspend(b + 1); a + b + c });
    assert_eq!(co.resume(1), CoroutineResult::Yield(10));
    assert_eq!(co.resume(5), CoroutineResult::Yield(6));
    assert_eq!(co.resume(100), CoroutineResult::Return(106));
    let bt = Coroutine::<(), (), String>::new(|_, ()| format!("{}", std::backtrace::Backtrace::force_capture()));
    let mut bt = bt; let s = bt.resume(()).as_return().unwrap();
    println!("{s}");
    assert!(s.contains("smoke"));
}

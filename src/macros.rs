//! Internal macros.

/// Defines a strategy's service: a struct of the inner service and the shared layer, with
/// `new`, `get_ref`, `get_mut`, `into_inner`, `Clone` and `Debug` (tower-http's
/// `define_inner_service_accessors!`, for our shape).
macro_rules! strategy_service {
    ($(#[$doc:meta])* $name:ident, $inner:literal) => {
        $(#[$doc])*
        pub struct $name<Svc, S, K, T> {
            inner: Svc,
            layer: std::sync::Arc<$crate::layer::CacheLayer<S, K, T>>,
        }

        impl<Svc, S, K, T> $name<Svc, S, K, T> {
            /// Wraps `inner` with the settings of `layer` (what `layer.layer(inner)` does).
            ///
            /// The accessors work alike on every strategy's service:
            ///
            /// ```
            /// use tower_caching::{Cache, CacheLayer};
            /// use tower_layer::Layer;
            ///
            /// let writer = tower::service_fn(|n: u64| async move { Ok::<_, std::convert::Infallible>(n) });
            /// let mut service = CacheLayer::write_through(Cache::<u64>::in_memory()).layer(writer);
            /// let _: &_ = service.get_ref();
            /// let _: &mut _ = service.get_mut();
            /// let writer = service.into_inner();
            /// # let _ = writer;
            /// ```
            pub fn new(inner: Svc, layer: $crate::layer::CacheLayer<S, K, T>) -> Self {
                $name {
                    inner,
                    layer: std::sync::Arc::new(layer),
                }
            }

            #[doc = concat!("The inner ", $inner, ". See [`new`](Self::new) for an example.")]
            pub fn get_ref(&self) -> &Svc {
                &self.inner
            }

            #[doc = concat!("The inner ", $inner, ", mutably. See [`new`](Self::new) for an example.")]
            pub fn get_mut(&mut self) -> &mut Svc {
                &mut self.inner
            }

            #[doc = concat!("The inner ", $inner, ", consuming the service. See [`new`](Self::new) for an example.")]
            pub fn into_inner(self) -> Svc {
                self.inner
            }
        }

        impl<Svc: Clone, S, K, T> Clone for $name<Svc, S, K, T> {
            fn clone(&self) -> Self {
                $name {
                    inner: self.inner.clone(),
                    layer: self.layer.clone(),
                }
            }
        }

        impl<Svc: std::fmt::Debug, S: std::fmt::Debug, K, T> std::fmt::Debug for $name<Svc, S, K, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("inner", &self.inner)
                    .field("layer", &self.layer)
                    .finish()
            }
        }
    };
}

pub(crate) use strategy_service;

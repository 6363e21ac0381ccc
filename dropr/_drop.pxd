# The compiled put path as the compiled front (dropr._putter) calls it: in C, without Python.

cpdef str put(int tmp_fd, int queue_fd, str peer_field, str channel_field, int priority, payload, bint sync,
              unsigned long long delay_ms=*, int free_fd=*, str reuse=*)
cpdef list put_many(int tmp_fd, int queue_fd, str peer_field, str channel_field, int priority, list payloads,
                    bint sync, unsigned long long delay_ms=*, int free_fd=*, str reuse=*)

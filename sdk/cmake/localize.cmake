# cmake -DCC= -DOBJCOPY= -DOBJDUMP= -DNM= -DOUT= -DOBJS="a.o;b.o" -P localize.cmake
# Makes libsluice's single relocatable object: partial link with section GC rooted at the
# exported (default-visibility) symbols, every hidden symbol made local, undefined symbols that
# no relocation needs any more dropped (msgpack-c's, from the collected msgpack->JSON code).
# Fails if a global other than sluice_* remains defined.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN}: ${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()

set(tmp ${OUT}.tmp)
# Through the compiler driver, so GNU ld does it whichever compiler (clang's lld has no
# --gc-keep-exported, and clang drives GNU ld by default).
run(${CC} -r -nostdlib -Wl,--gc-sections,--gc-keep-exported -o ${tmp} ${OBJS})
run(${OBJCOPY} --localize-hidden ${tmp})
run(${OBJDUMP} -r ${tmp})
set(relocs "${run_out}")
run(${NM} -u ${tmp})
string(REGEX MATCHALL "[^ \n]+\n" undef "${run_out}")
set(strip_args "")
foreach(sym ${undef})
  string(STRIP "${sym}" sym)
  string(REGEX MATCH "[ \n]${sym}([-+ \n]|$)" used "${relocs}")
  if(NOT used)
    list(APPEND strip_args --strip-symbol=${sym})
  endif()
endforeach()
if(strip_args)
  run(${OBJCOPY} ${strip_args} ${tmp})
endif()
run(${NM} -g --defined-only ${tmp})
string(REGEX MATCHALL "[0-9a-fA-F]+ [A-Za-z] [^\n]+" defs "${run_out}")
foreach(line ${defs})
  string(REGEX REPLACE "^[0-9a-fA-F]+ [A-Za-z] " "" sym "${line}")
  # Sanitizer runtimes define their own instrumentation globals; everything of ours is sluice_.
  if(NOT sym MATCHES "^sluice_" AND NOT sym MATCHES "^(__asan|__odr_asan|__ubsan|__tsan|___asan)")
    message(FATAL_ERROR "libsluice would export '${sym}': make it static, hidden or sluice_*")
  endif()
endforeach()
file(RENAME ${tmp} ${OUT})

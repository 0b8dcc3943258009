# Builds and runs a consumer project against ttx: MODE=find_package installs ttx into a scratch
# prefix first; MODE=add_subdirectory pulls the source tree in. Fails on any non-zero step.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()
set(here ${CMAKE_CURRENT_LIST_DIR})
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${TTX_SOURCE_DIR} -B ${WORK_DIR}/ttx-build -G ${GENERATOR}
      -DTTX_BUILD_TESTS=OFF -DTTX_BUILD_BENCHMARKS=OFF -DTTX_BUILD_EXAMPLES=OFF -DTTX_INSTALL=ON
      -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/ttx-build)
  run(${CMAKE_COMMAND} -S ${here}/find_package_consumer -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${here}/add_subdirectory_consumer -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DTTX_SOURCE_DIR=${TTX_SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)

/* Prints the size and field offsets of every struct the stand-in exchanges with callers.
 * Built twice, with -DABI_HEADER="rknn_abi.h" and with Rockchip's rknn_api.h: the two
 * outputs must be identical. */
#include <stddef.h>
#include <stdio.h>
#include ABI_HEADER

#define SIZE(t) printf("%s %zu\n", #t, sizeof(t))
#define FIELD(t, f) printf("%s.%s %zu\n", #t, #f, offsetof(t, f))

int main(void)
{
    SIZE(rknn_context);
    SIZE(rknn_input_output_num);
    FIELD(rknn_input_output_num, n_output);
    SIZE(rknn_tensor_attr);
    FIELD(rknn_tensor_attr, n_dims);
    FIELD(rknn_tensor_attr, dims);
    FIELD(rknn_tensor_attr, name);
    FIELD(rknn_tensor_attr, n_elems);
    FIELD(rknn_tensor_attr, size);
    FIELD(rknn_tensor_attr, fmt);
    FIELD(rknn_tensor_attr, type);
    FIELD(rknn_tensor_attr, qnt_type);
    FIELD(rknn_tensor_attr, fl);
    FIELD(rknn_tensor_attr, zp);
    FIELD(rknn_tensor_attr, scale);
    FIELD(rknn_tensor_attr, w_stride);
    FIELD(rknn_tensor_attr, size_with_stride);
    FIELD(rknn_tensor_attr, pass_through);
    FIELD(rknn_tensor_attr, h_stride);
    SIZE(rknn_input_range);
    FIELD(rknn_input_range, shape_number);
    FIELD(rknn_input_range, fmt);
    FIELD(rknn_input_range, name);
    FIELD(rknn_input_range, dyn_range);
    FIELD(rknn_input_range, n_dims);
    SIZE(rknn_perf_detail);
    SIZE(rknn_perf_run);
    SIZE(rknn_sdk_version);
    FIELD(rknn_sdk_version, drv_version);
    SIZE(rknn_mem_size);
    FIELD(rknn_mem_size, total_dma_allocated_size);
    FIELD(rknn_mem_size, total_sram_size);
    FIELD(rknn_mem_size, reserved);
    SIZE(rknn_custom_string);
    SIZE(rknn_tensor_mem);
    FIELD(rknn_tensor_mem, phys_addr);
    FIELD(rknn_tensor_mem, fd);
    FIELD(rknn_tensor_mem, size);
    FIELD(rknn_tensor_mem, priv_data);
    SIZE(rknn_input);
    FIELD(rknn_input, buf);
    FIELD(rknn_input, size);
    FIELD(rknn_input, pass_through);
    FIELD(rknn_input, type);
    FIELD(rknn_input, fmt);
    SIZE(rknn_output);
    FIELD(rknn_output, is_prealloc);
    FIELD(rknn_output, index);
    FIELD(rknn_output, buf);
    FIELD(rknn_output, size);
    SIZE(rknn_init_extend);
    FIELD(rknn_init_extend, real_model_offset);
    FIELD(rknn_init_extend, model_buffer_fd);
    FIELD(rknn_init_extend, reserved);
    SIZE(rknn_run_extend);
    FIELD(rknn_run_extend, non_block);
    FIELD(rknn_run_extend, fence_fd);
    SIZE(rknn_output_extend);
    printf("enum %zu %d %d %d\n", sizeof(rknn_tensor_type), RKNN_QUERY_CURRENT_NATIVE_OUTPUT_ATTR,
           RKNN_TENSOR_BFLOAT16, RKNN_ERR_TARGET_PLATFORM_UNMATCH);
    return 0;
}
